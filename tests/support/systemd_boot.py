"""Boot a root filesystem with its own systemd as PID 1, the way a container manager does, without one.

This machine's init is not systemd and its cgroups are v1 (a `name=systemd` hierarchy is mounted), and
systemd-nspawn is not installed. So: `unshare --pid --mount --uts --ipc --net --cgroup --fork` from inside
a fresh child cgroup of the host's name=systemd hierarchy (the cgroup namespace makes it the root the
booted systemd sees and fills), then /proc, a read-only /sys, a tmpfs /sys/fs/cgroup with the name=systemd
hierarchy (on a cgroup v2 machine: the unified hierarchy, a path not tried here), a small /dev (null, zero,
full, random, urandom, tty, devpts, /dev/console = a pseudo-terminal we read), tmpfs /run and /tmp,
`container=other` in the environment (systemd's own container interface: no udev, no getty on tty1), and
`exec chroot ROOT /lib/systemd/systemd`. The network namespace holds only an unconfigured loopback:
nothing the booted units do reaches beyond it.

    with systemd_boot.booted(root, work) as machine:   # returns once systemd answers
        machine.wait_running(120)                       # `systemctl is-system-running --wait`
        machine.show("scipioncloud-agent.service", "ActiveState")
    # powered off (SIGRTMIN+4 to PID 1: poweroff.target), every process of the boot gone, its cgroups removed
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup/systemd")  # cgroup v1, name=systemd (this machine)
CGROUP_V2 = Path("/sys/fs/cgroup")  # the unified hierarchy (not tried here: this machine has no cgroup v2)

# Runs as PID 1 of the new namespaces until it execs systemd. $1 root, $2 the console's tty, $3 v1 or v2.
START = """set -eu
root="$1"; console="$2"; hierarchy="$3"
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
if [ "$hierarchy" = v2 ]; then
  mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
else
  mount -t tmpfs -o mode=755 tmpfs "$root/sys/fs/cgroup"
  mkdir "$root/sys/fs/cgroup/systemd"
  mount -t cgroup -o none,name=systemd cgroup "$root/sys/fs/cgroup/systemd"
fi
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
for node in null zero full random urandom tty; do
  touch "$root/dev/$node"; mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
touch "$root/dev/console"; mount --bind "$console" "$root/dev/console"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
cd "$root"
exec chroot . /usr/bin/env -i container=other /lib/systemd/systemd --log-target=console --log-color=no \
  --show-status=yes
"""


SYSTEMD = b"/lib/systemd/systemd"


@dataclasses.dataclass
class Machine:
    root: Path
    process: subprocess.Popen
    cgroup: Path
    console_log: Path

    def pid1(self) -> int:
        """systemd's PID as this machine sees it. It starts in the cgroup made for it and then moves itself
        into init.scope below it, where the kernel lets it ("Failed to attach 1 to compat systemd cgroup
        /init.scope" on the console when not: which one happens varies from boot to boot), so both are read;
        a user's `systemd --user` (same program) lives deeper, in user.slice."""
        for procs in (self.cgroup / "cgroup.procs", self.cgroup / "init.scope" / "cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == SYSTEMD:
                            return int(pid)
        raise RuntimeError(f"no systemd in {self.cgroup}; console:\n{self.console()[-3000:]}")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """argv inside the booted machine (all its namespaces, its root)."""
        enter = ["nsenter", "--target", str(self.pid1()), "--all", "--root", "--wd"]
        return subprocess.run([*enter, *argv], capture_output=True, text=True, timeout=timeout, check=False)

    def answers(self) -> bool:
        """systemd is PID 1 and its manager answers on D-Bus/its private socket."""
        try:
            state = self.run("systemctl", "is-system-running").stdout.strip()
        except RuntimeError:
            return False
        return state not in ("", "offline", "unknown")

    def wait_running(self, timeout: float = 180) -> str:
        """`systemctl is-system-running --wait`: "running", or "degraded" when a unit failed."""
        done = self.run("systemctl", "is-system-running", "--wait", timeout=timeout)
        return done.stdout.strip()

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        done = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def console(self) -> str:
        return self.console_log.read_text(errors="replace").replace("\r\n", "\n").replace("\r", "")


def point_imds_at(root: Path, url: str) -> None:
    """Off EC2, in the booted copy: the first-boot units' and the agent's instance metadata address is `url`
    (a closed loopback port), never 169.254.169.254 (the booted network namespace has no route anyway)."""
    for unit in ("scipioncloud-firstboot.service", "scipioncloud-desktop-firstboot.service"):
        dropin = root / f"etc/systemd/system/{unit}.d/imds.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Service]\nEnvironment=SCIPIONCLOUD_IMDS_URL={url}\n")
    config = root / "etc/scipioncloud/agent.toml"
    if config.exists():
        config.write_text(re.sub(r'(?m)^imds_url = ".*"$', f'imds_url = "{url}"', config.read_text()))


def _remove_cgroups(top: Path) -> None:
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


@contextlib.contextmanager
def booted(root: Path, work: Path, timeout: float = 60) -> Iterator[Machine]:
    work.mkdir(parents=True, exist_ok=True)
    hierarchy = "v1" if CGROUP_V1.is_dir() else "v2"
    if hierarchy == "v2" and not (CGROUP_V2 / "cgroup.controllers").exists():
        raise RuntimeError("no cgroup hierarchy for systemd: neither v1 name=systemd nor v2 is mounted")
    cgroup = (
        CGROUP_V1 if hierarchy == "v1" else CGROUP_V2
    ) / f"scipioncloud-boot-{os.getpid()}-{time.monotonic_ns()}"
    cgroup.mkdir()
    console_log = work / "console.log"
    master, slave = os.openpty()
    out = console_log.open("wb")

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return  # the last writer is gone
            if not data:
                return
            out.write(data)
            out.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def enter_cgroup() -> None:  # in the child, before unshare: the cgroup namespace's root
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    argv = ["unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--cgroup", "--fork", "--kill-child",
            "sh", "-c", START, "sh", str(root), os.ttyname(slave), hierarchy]  # fmt: skip
    process = subprocess.Popen(
        argv, preexec_fn=enter_cgroup, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
    )
    os.close(slave)
    machine = Machine(root, process, cgroup, console_log)
    try:
        deadline = time.monotonic() + timeout
        while not machine.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd did not come up in {root}:\n{machine.console()[-3000:]}")
            time.sleep(0.5)
        yield machine
    finally:
        _power_off(machine)
        reader.join(5)
        os.close(master)
        out.close()
        _remove_cgroups(cgroup)


def _power_off(machine: Machine, timeout: float = 60) -> None:
    """SIGRTMIN+4 asks systemd for poweroff.target; whatever is left after `timeout` is killed."""
    with contextlib.suppress(RuntimeError, ProcessLookupError):
        os.kill(machine.pid1(), signal.SIGRTMIN + 4)
    try:
        machine.process.wait(timeout)
    except subprocess.TimeoutExpired:
        machine.process.kill()  # --kill-child takes PID 1 and with it the namespace's every process
        machine.process.wait()
    deadline = time.monotonic() + 10
    while any(machine.cgroup.rglob("cgroup.procs")) and time.monotonic() < deadline:
        pids = [p for f in machine.cgroup.rglob("cgroup.procs") for p in f.read_text().split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)
