"""`make agent` (tools/dev-agent) never sends a packet off the machine: it runs in a network namespace of
the test's own whose only way out is a veth pair with a default route; every route is asked once, and the
veth's transmit counter must stay at zero (any packet to 169.254.169.254 or elsewhere would count, even an
ARP request for the gateway)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO, VENV_BIN, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a network namespace"),
]

ROUTES = [
    "/healthz",
    "/openapi.json",
    "/metrics",
    "/v1/gpus",
    "/v1/host",
    "/v1/idle",
    "/v1/volumes",
    "/v1/prewarm",
    "/v1/desktop",
]

# Runs inside `unshare -n`: the veth, the agent, the requests, then the counter.
SCRIPT = r"""
set -euo pipefail
ip link set lo up
ip link add v0 type veth peer name v1
sysctl -qw net.ipv6.conf.v0.disable_ipv6=1 net.ipv6.conf.v1.disable_ipv6=1
ip addr add 10.200.0.1/24 dev v0
ip link set v1 up
ip link set v0 up
ip route add default via 10.200.0.2 dev v0 onlink
tools/dev-agent > "$DEV_AGENT_DIR.log" 2>&1 &
agent=$!
trap 'kill $agent 2>/dev/null; wait $agent 2>/dev/null || true' EXIT
"$PY" - <<'PY'
import os, sys, time, urllib.request, urllib.error
base = f"http://127.0.0.1:{os.environ['AGENT_PORT']}"
deadline = time.monotonic() + 30
while True:
    try:
        urllib.request.urlopen(base + "/healthz", timeout=2).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("dev agent did not answer")
        time.sleep(0.2)
token = open(os.path.join(os.environ["DEV_AGENT_DIR"], "agent.token")).read().strip()
for route in os.environ["ROUTES"].split():
    request = urllib.request.Request(base + route, headers={"Authorization": f"Bearer {token}"})
    try:
        status = urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as exc:
        status = exc.code
    print("route", route, status)
time.sleep(2)  # anything sent in the background (samplers, identity lookup) has had time to leave
PY
count='import json, sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["packets"])'
tx=$(ip -j -s link show v0 | "$PY" -c "$count")
echo "tx_packets $tx"
"""


def test_make_agent_sends_nothing_off_the_machine(tmp_path):
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("unshare and ip (util-linux, iproute2) are needed")
    env = {
        **os.environ,
        "DEV_AGENT_DIR": str(tmp_path / "dev-agent"),
        "AGENT_PORT": str(free_port()),
        "PY": str(VENV_BIN / "python"),
        "ROUTES": " ".join(ROUTES),
    }
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = (tmp_path / "dev-agent.log").read_text() if (tmp_path / "dev-agent.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log
    answered = [line.split() for line in result.stdout.splitlines() if line.startswith("route ")]
    assert [route for _, route, _ in answered] == ROUTES
    assert all(status in ("200", "503") for *_, status in answered), answered
    assert "tx_packets 0" in result.stdout, result.stdout + log
