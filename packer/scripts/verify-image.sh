#!/bin/sh
# In-image verification, run by Packer before sysprep: assert real things about what the roles installed.
# VERIFY_GPU=true also requires a working NVIDIA driver (the build instance type has a GPU).
set -eu
fail() { echo "verify-image: FAILED: $*" >&2; exit 1; }
ok() { echo "verify-image: ok: $*"; }

venv=/opt/scipioncloud/venv
[ -x "$venv/bin/scipioncloud-agent" ] || fail "the agent is not installed in $venv"
"$venv/bin/scipioncloud-agent" --help >/dev/null || fail "scipioncloud-agent does not run"
"$venv/bin/python" -c "from agent.config import load; load('/etc/scipioncloud/agent.toml')" ||
  fail "/etc/scipioncloud/agent.toml is not a valid agent configuration"
ok "agent installed and its configuration loads"

for unit in scipioncloud-agent.service scipioncloud-firstboot.service; do
  [ "$(systemctl is-enabled "$unit" 2>/dev/null)" = enabled ] || fail "$unit is not enabled"
done
ok "agent and first-boot units enabled"

command -v fio >/dev/null || fail "fio is missing"
grep -q '"^nvidia-";' /etc/apt/apt.conf.d/51scipioncloud-unattended-upgrades ||
  fail "unattended upgrades do not hold NVIDIA packages"
ok "fio present, unattended upgrades hold kernel and NVIDIA packages"

if [ -e /usr/local/cuda ]; then
  /usr/local/cuda/bin/nvcc --version >/dev/null || fail "nvcc of /usr/local/cuda does not run"
  grep -qs /usr/local/cuda /etc/ld.so.conf.d/*.conf || fail "CUDA libraries are not on the system library path"
  ok "CUDA toolkit $(readlink -f /usr/local/cuda) is the default"
fi

if [ -x /opt/scipion/scipion3 ]; then
  owner=$(stat -c %U /opt/scipion)
  # a throwaway HOME: the check must leave no caches in the user's home (the image is snapshotted next)
  scratch=$(mktemp -d) && chown "$owner" "$scratch"
  runuser -u "$owner" -- env HOME="$scratch" /opt/scipion/scipion3 printenv |
    grep -q 'SCIPION_HOME="/opt/scipion"' ||
    fail "scipion3 printenv does not run as $owner"
  rm -rf "$scratch"
  ok "Scipion 3 runs as $owner"
fi

if [ "${VERIFY_GPU:-true}" = true ]; then
  command -v nvidia-smi >/dev/null || fail "nvidia-smi is missing (VERIFY_GPU=true)"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || fail "nvidia-smi cannot reach a GPU"
  ok "NVIDIA driver answers"
fi
echo "verify-image: ${IMAGE_NAME:-image} verified"
