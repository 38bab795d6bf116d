"""The image hygiene audit, run from outside against a root filesystem: what sysprep must have removed.

Used by the role tests and the bake rehearsal; the same list as roles/sysprep/tasks/verify.yml checks from
inside the image."""

from __future__ import annotations

from pathlib import Path

SECRETS = (
    "etc/scipioncloud/agent.token",
    "etc/scipioncloud/vnc.password",
    "etc/scipioncloud/tls/key.pem",
    "root/.vnc/passwd",
    "home/ubuntu/.vnc/passwd",
)

LOGIN_ACCOUNTING = {"wtmp", "btmp", "lastlog"}


def audit(root: Path) -> list[str]:
    """Every problem found in the image at `root`; an empty list means clean."""
    problems = [f"ssh host key {p}" for p in sorted((root / "etc/ssh").glob("ssh_host_*"))]
    for home in [root / "root", *sorted((root / "home").glob("*"))]:
        for name in ("authorized_keys", "authorized_keys2"):
            if (home / ".ssh" / name).exists():
                problems.append(f"authorized keys {home / '.ssh' / name}")
        for name in (".bash_history", ".python_history"):
            if (home / name).exists():
                problems.append(f"shell history {home / name}")
    machine_id = root / "etc/machine-id"
    if not machine_id.exists() or machine_id.stat().st_size != 0:
        problems.append("machine-id is not an empty file")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        problems.append("a copied D-Bus machine-id")
    problems += [f"secret /{p}" for p in SECRETS if (root / p).exists()]
    # any private key anywhere under /etc (TLS or otherwise)
    for path in (root / "etc").rglob("*"):
        try:
            small_file = path.is_file() and not path.is_symlink() and path.stat().st_size < 20000
            if small_file and b"PRIVATE KEY-----" in path.read_bytes():
                problems.append(f"private key /{path.relative_to(root)}")
        except OSError:
            continue
    for log in (root / "var/log").rglob("*"):
        # login accounting: the builder's own SSH session writes it when it logs out after sysprep
        if log.name in LOGIN_ACCOUNTING:
            continue
        if log.is_file() and not log.is_symlink() and log.stat().st_size > 0:
            problems.append(f"non-empty log /{log.relative_to(root)}")
    if (root / "var/lib/cloud/instance").exists():
        problems.append("cloud-init instance state")
    return problems
