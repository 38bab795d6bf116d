"""A disposable Debian 12 root filesystem for running the real Ansible roles without touching this machine.

The stand-in for the bake's build instance (and for an existing workstation): debootstrap makes a bookworm
root filesystem once, it is cached as a tarball, and every test extracts its own fresh copy and runs a real
playbook against it through the `community.general.chroot` connection. The whole ansible-playbook process
runs in a private mount namespace, with /proc, /sys and /dev bind-mounted into the copy, so every mount
vanishes with the process and nothing mounts on the host; a `policy-rc.d` in the copy keeps packages from
starting services.

API (all paths are `pathlib.Path`):

    tarball(packages=PACKAGES, mirror=None) -> Path
        The cached tarball, built when missing: debootstrap (minbase, from the mirror this machine's apt
        uses, see host_mirror()) then apt-get install of `packages` inside it. Cache folder:
        $SCIPIONCLOUD_CACHE or ~/.cache/scipioncloud; the file name carries a hash of (suite, variant,
        packages), so changing the package list builds a new one. Safe to call from concurrent processes
        (file lock); a failed build leaves its log next to the tarball's name (*.build.log).
    extract(tar, dest) -> Path
        A fresh copy of the tarball in `dest` (created; must be empty or missing), with the host's
        resolv.conf and local CA certificates (so apt, curl and pip reach the mirrors through this
        machine's egress proxy) and a policy-rc.d that forbids service starts.
    disposable(parent, tar=None) -> context manager yielding the extracted root
        extract() into parent/"rootfs" and remove it afterwards (refuses to remove a tree with a mount
        below it).
    run_playbook(root, playbook, extra_vars=None, vars_files=(), tags=None, timeout=1800, env=None)
        -> PlaybookResult: rc, stdout (the JSON callback's document), stderr, stats (the PLAY RECAP
        dict of host `rootfs`), changed_tasks, failed_tasks (names, with their messages), and the
        properties `changed` (recap count), `failed` (failures + unreachable); `summary()` makes a short
        assertion message. Runs ansible-playbook from this interpreter's bin folder (the venv) against
        the inventory alias `rootfs` (ansible_host=<root>, group `rootfs_targets`), so plays use
        `hosts: all` or `hosts: rootfs_targets`. An idempotence test:
        `assert second.changed == 0, second.summary()`.
    run_in_root(root, *argv) -> CompletedProcess
        a command chrooted into the copy (same private mount namespace), e.g. for hygiene checks.
    hold_apt_locks(root, seconds) -> context manager yielding the holder's Popen
        holds apt's and dpkg's locks in the copy for `seconds`, as unattended-upgrades does on an
        Ubuntu cloud image's first boot; returns once they are held.

Typical use (the `rootfs_tarball` session fixture in tests/conftest.py calls tarball()):

    with rootfs.disposable(tmp_path, rootfs_tarball) as root:
        first = rootfs.run_playbook(root, REPO / "roles/site.yml", vars_files=[REPO / "images/x.yml"])
        assert first.rc == 0, first.summary()
        again = rootfs.run_playbook(root, ...)
        assert again.changed == 0, again.summary()

Mind: changed_when/handlers that restart services should act only where /run/systemd/system exists
(never true here: /run is a fresh tmpfs), and the copy reaches the network only through this machine's
resolver and CAs. `PACKAGES` lists what the base holds (python3, python3-apt, sudo, openssh-server,
systemd, cloud-init, gnupg, curl, ...).

Needs root, debootstrap, unshare, tar and zstd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
# What the Ubuntu cloud images carry and Ansible and our roles expect on a fresh build instance.
PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-apt",  # ansible.builtin.apt
    "sudo",
    "openssh-server",  # the rehearsal's sshd target; sysprep removes its host keys
    "ca-certificates",
    "apt-transport-https",
    "gnupg",
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",  # as on the Ubuntu AMIs; sysprep runs `cloud-init clean`
    "iproute2",
    "procps",
    "curl",
    "locales",
)
FALLBACK_MIRROR = "http://deb.debian.org/debian"
VENV_BIN = Path(sys.executable).parent
POLICY_RC_D = "#!/bin/sh\n# ScipionCloud test root: packages never start services here.\nexit 101\n"


def cache_dir() -> Path:
    path = Path(os.environ.get("SCIPIONCLOUD_CACHE") or Path.home() / ".cache" / "scipioncloud")
    path.mkdir(parents=True, exist_ok=True)
    return path


def host_mirror(sources: Iterable[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses (deb822 `URIs:` or one-line `deb`), else deb.debian.org."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", line)
            if m and re.search(r"/debian/?$", m.group(1)) and "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return FALLBACK_MIRROR


def _key(packages: Iterable[str]) -> str:
    text = "\n".join([SUITE, VARIANT, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tarball(packages: Iterable[str] = PACKAGES, mirror: str | None = None) -> Path:
    """The cached root filesystem tarball for `packages`; debootstrap builds it the first time."""
    packages = tuple(packages)
    cache = cache_dir()
    target = cache / f"debian-{SUITE}-{VARIANT}-{_key(packages)}.tar.zst"
    if target.exists():
        return target
    with (cache / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same one
        if target.exists():
            return target
        _build(target, packages, mirror or host_mirror())
    return target


# debootstrap resolves --include poorly for larger sets (cloud-init's python3-cryptography failed to
# configure), so it lays down a minimal base and apt-get installs the rest inside the same namespace.
_BUILD_SCRIPT = """set -e
root="$1"; mirror="$2"; shift 2
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$mirror"
printf '#!/bin/sh\\nexit 101\\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y --no-install-recommends "$@"
chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
"""


def _build(target: Path, packages: tuple[str, ...], mirror: str) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rootfs-build-", dir=target.parent) as tmp:
        root = Path(tmp) / "root"
        log = target.parent / f"{target.name}.build.log"
        # debootstrap and apt mount /proc and /sys inside the target: keep all mounts in a private namespace.
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _BUILD_SCRIPT, "sh",
                str(root), mirror, *packages]  # fmt: skip
        with log.open("w") as out:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(
                f"building the root filesystem failed ({rc}) from {mirror}; see {log}:\n{tail}"
            )
        part = target.with_suffix(".part")
        subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "-I",
                "zstd -T0 -3",
                "-C",
                str(root),
                "-cf",
                str(part),
                ".",
            ],
            check=True,
        )
        part.rename(target)
    print(f"rootfs: built {target.name} in {time.monotonic() - started:.0f} s", file=sys.stderr)


def extract(tar: Path, dest: Path) -> Path:
    """A fresh writable copy of the tarball in `dest`, ready for Ansible."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty; extract into a new folder")
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-I", "zstd", "-C", str(dest), "-xpf", str(tar)], check=True
    )
    resolv = dest / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text(Path("/etc/resolv.conf").read_text())
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    _trust_host_cas(dest)
    return dest


def _trust_host_cas(dest: Path) -> None:
    """Give the copy this machine's local certificate authorities (an HTTPS-intercepting egress proxy
    here), so apt, curl and pip inside it reach PyPI as the host does. pip's own bundle (certifi) ignores
    the system store, hence the pip.conf; none of this is part of any role."""
    local = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not local:
        return
    target = dest / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    bundle = dest / "etc/ssl/certs/ca-certificates.crt"
    with bundle.open("a") as out:
        for crt in local:
            shutil.copy2(crt, target / crt.name)
            out.write("\n" + crt.read_text())
    (dest / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def remove(root: Path) -> None:
    """Delete an extracted root, refusing if anything is still mounted below it (it would be the host's)."""
    mounted = _mounts_below(root)
    if mounted:
        raise RuntimeError(f"not removing {root}: still mounted below it: {mounted}")
    shutil.rmtree(root)


@contextlib.contextmanager
def disposable(parent: Path, tar: Path | None = None) -> Iterator[Path]:
    root = extract(tar or tarball(), parent / "rootfs")
    try:
        yield root
    finally:
        remove(root)


# Runs as `sh -c SCRIPT sh ROOT ARGV...` inside `unshare --mount --propagation private`: the binds exist
# only in that namespace and go away with it.
_NAMESPACE_SCRIPT = """set -e
root="$1"; shift
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/lock"
exec "$@"
"""


def in_namespace(root: Path, argv: list[str]) -> list[str]:
    """argv wrapped so that it runs in a private mount namespace with root's /proc, /sys, /dev bound."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _NAMESPACE_SCRIPT, "sh",
            str(root), *argv]  # fmt: skip


def run_in_root(root: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        in_namespace(root, ["chroot", str(root), *argv]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclasses.dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    stats: dict  # the PLAY RECAP for host `rootfs`: ok, changed, failures, unreachable, skipped, ...
    changed_tasks: list[str]
    failed_tasks: list[str]

    @property
    def changed(self) -> int:
        return int(self.stats.get("changed", 0))

    @property
    def failed(self) -> int:
        return int(self.stats.get("failures", 0)) + int(self.stats.get("unreachable", 0))

    def summary(self) -> str:
        """A short text for assertion messages: rc, recap, changed and failed tasks, stderr tail."""
        return (
            f"rc={self.rc} stats={self.stats}\nchanged: {self.changed_tasks}\nfailed: {self.failed_tasks}\n"
            f"stderr: {self.stderr[-3000:]}"
        )


def _parse(stdout: str) -> tuple[dict, list[str], list[str]]:
    start = stdout.find("{")
    try:
        doc = json.loads(stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}, [], []
    changed, failed = [], []
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            result = task.get("hosts", {}).get("rootfs", {})
            name = task.get("task", {}).get("name", "?")
            if result.get("changed"):
                changed.append(name)
            if result.get("failed") or result.get("unreachable"):
                msgs = [str(result.get("msg", ""))]
                # a loop's own messages are per item
                msgs += [str(item.get("msg", "")) for item in result.get("results", []) if item.get("failed")]
                failed.append(f"{name}: {' | '.join(msgs)[:1000]}")
    return doc.get("stats", {}).get("rootfs", {}), changed, failed


def inventory(root: Path, dest: Path) -> Path:
    """An inventory with the alias `rootfs` (a path as host name breaks Ansible's fact cache)."""
    dest.write_text(
        "[rootfs_targets]\n"
        f"rootfs ansible_host={root} ansible_connection=community.general.chroot "
        "ansible_python_interpreter=/usr/bin/python3\n"
    )
    return dest


def run_playbook(
    root: Path,
    playbook: Path,
    extra_vars: dict | None = None,
    vars_files: Iterable[Path] = (),
    tags: Iterable[str] | None = None,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
) -> PlaybookResult:
    """Run a real playbook against the extracted root; returns rc, output and the parsed recap."""
    work = Path(tempfile.mkdtemp(prefix="rootfs-ansible-"))
    try:
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory(root, work / "inventory.ini"))]
        for path in vars_files:
            argv += ["-e", f"@{path}"]
        if extra_vars:
            (work / "extra.json").write_text(json.dumps(extra_vars))
            argv += ["-e", f"@{work / 'extra.json'}"]
        if tags:
            argv += ["--tags", ",".join(tags)]
        argv.append(str(playbook))
        run_env = {
            **os.environ,
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **(env or {}),
        }
        proc = subprocess.run(
            in_namespace(root, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=run_env,
            check=False,
        )
        stats, changed, failed = _parse(proc.stdout)
        return PlaybookResult(proc.returncode, proc.stdout, proc.stderr, stats, changed, failed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# The locks apt-get update (lists) and dpkg/apt installs (lock-frontend, then lock) take: fcntl record locks
# (apt-pkg's GetLock uses F_SETLK), so the holder uses lockf, which conflicts with them across namespaces.
APT_LOCKS = ("var/lib/dpkg/lock-frontend", "var/lib/dpkg/lock", "var/lib/apt/lists/lock")
_HOLD_SCRIPT = """import fcntl, sys, time
seconds, paths = float(sys.argv[1]), sys.argv[2:]
files = [open(p, "a") for p in paths]
for f in files:
    fcntl.lockf(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(seconds)
print("released", flush=True)
"""


@contextlib.contextmanager
def hold_apt_locks(root: Path, seconds: float) -> Iterator[subprocess.Popen]:
    """apt and dpkg in `root` find their locks taken for `seconds` (from when this returns)."""
    paths = [root / lock for lock in APT_LOCKS]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SCRIPT, str(seconds), *map(str, paths)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = holder.stdout.readline().strip()  # type: ignore[union-attr]
        if line != "held":
            raise RuntimeError(f"could not take the apt locks in {root}: {line!r}")
        yield holder
    finally:
        from tests.support import processes

        processes.stop(holder)
        holder.stdout.close()  # type: ignore[union-attr]
