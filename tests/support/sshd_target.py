"""The rehearsal's build instance: an sshd on 127.0.0.1 chrooted into a disposable root filesystem.

Packer's communicator and Ansible reach it through `ssh_host`/`ssh_port`, never through the emulator's fake
public IP. sshd runs in a private mount namespace (tests/support/rootfs.in_namespace: /proc, /sys, /dev
bound, /run a fresh tmpfs), so every command Packer and Ansible run lands inside the copy, with no mount
on this machine.

EC2 stand-in: on a real instance cloud-init creates the `ubuntu` user (passwordless sudo) and writes the
launch key pair into its authorized_keys. Here `start()` creates the user, and an AuthorizedKeysCommand
plays cloud-init's part for the key: it records the key Packer offers in ~ubuntu/.ssh/authorized_keys and
accepts it (Packer's only key is the temporary key pair the emulator issued). That leaves a real
authorized_keys for sysprep to remove.

    target = sshd_target.start(root, work_dir)   # waits until the port answers
    ... packer build -var ssh_host=127.0.0.1 -var ssh_port={target.port} ...
    target.stop()
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from pathlib import Path

from tests.support import processes, rootfs

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey /run/rehearsal/ssh_host_ed25519_key
PidFile /run/rehearsal/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AuthorizedKeysFile .ssh/authorized_keys
AuthorizedKeysCommand /run/rehearsal/cloud-init-keys %u %t %k
AuthorizedKeysCommandUser root
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
"""

# Stand-in for cloud-init's handling of the EC2 launch key pair (see the module docstring).
KEYS_COMMAND = """\
#!/bin/sh
[ "$1" = ubuntu ] || exit 0
dir=/home/ubuntu/.ssh
line="$2 $3"
mkdir -p "$dir"
grep -qxF "$line" "$dir/authorized_keys" 2>/dev/null || echo "$line" >> "$dir/authorized_keys"
chown -R ubuntu:ubuntu "$dir"
chmod 700 "$dir"
chmod 600 "$dir/authorized_keys"
echo "$line"
"""

# Runs inside the namespace, before chroot: /run is the namespace's fresh tmpfs by now. With cloud_init,
# /run/cloud-init links to the stages' status files as cloud-init makes it (tests/support/cloud_init_boot.py).
START = """set -e
root="$1"; work="$2"; cloud_init="$3"; shift 3
mkdir -p "$root/run/sshd" "$root/run/rehearsal"
if [ "$cloud_init" = yes ]; then
  mkdir -p "$root/run/cloud-init"
  ln -s ../../var/lib/cloud/data/status.json "$root/run/cloud-init/status.json"
  ln -s ../../var/lib/cloud/data/result.json "$root/run/cloud-init/result.json"
fi
chmod 0755 "$root/run/rehearsal"
cp "$work/sshd_config" "$work/ssh_host_ed25519_key" "$work/cloud-init-keys" "$root/run/rehearsal/"
chmod 0600 "$root/run/rehearsal/ssh_host_ed25519_key"
chmod 0755 "$root/run/rehearsal/cloud-init-keys"
exec chroot "$root" /usr/sbin/sshd -D -e -f /run/rehearsal/sshd_config
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class SshdTarget:
    root: Path
    port: int
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        processes.stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def add_cloud_user(root: Path, user: str = "ubuntu") -> None:
    """What cloud-init does on an Ubuntu AMI: a default user with passwordless sudo."""
    if f"\n{user}:" not in "\n" + (root / "etc/passwd").read_text():
        for argv in (
            ["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", user],
            ["usermod", "--password", "*", user],  # no password, but not locked (sshd refuses locked users)
        ):
            done = rootfs.run_in_root(root, *argv)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed in {root}: {done.stderr}")
    sudoers = root / "etc/sudoers.d/90-cloud-init-users"
    sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)


def start(root: Path, work: Path, timeout: float = 20, cloud_init: bool = False) -> SshdTarget:
    """sshd chrooted into `root`; with `cloud_init`, the target's /run/cloud-init shows cloud-init's stage
    status files (write them first: tests/support/cloud_init_boot.py), as on an instance that booted it."""
    work.mkdir(parents=True, exist_ok=True)
    add_cloud_user(root)
    port = free_port()
    (work / "sshd_config").write_text(SSHD_CONFIG.format(port=port))
    (work / "cloud-init-keys").write_text(KEYS_COMMAND)
    key = work / "ssh_host_ed25519_key"
    key.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    log_path = work / "sshd.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            rootfs.in_namespace(
                root, ["sh", "-c", START, "sh", str(root), str(work), "yes" if cloud_init else "no"]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    target = SshdTarget(root, port, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd in {root} exited with {process.returncode}: {target.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return target
        except OSError:
            time.sleep(0.2)
    target.stop()
    raise RuntimeError(f"sshd in {root} did not answer on 127.0.0.1:{port}: {target.log()}")
