"""The image hygiene audit, run from outside against a root filesystem: what sysprep must have removed.

Used by the role tests and the bake rehearsal. The per-instance secrets come from the same list sysprep
reads inside the image: the <role>.list files each role writes into PER_INSTANCE_DIR (one absolute path a
line)."""

from __future__ import annotations

from pathlib import Path

PER_INSTANCE_DIR = "etc/scipioncloud/per-instance.d"  # role firstboot's firstboot_per_instance_dir

LOGIN_ACCOUNTING = {"wtmp", "btmp", "lastlog"}


def per_instance_paths(root: Path) -> dict[str, list[str]]:
    """{role: [absolute path, ...]} from the lists the roles left in the image at `root`."""
    lists = {}
    for listing in sorted((root / PER_INSTANCE_DIR).glob("*.list")):
        lines = (line.strip() for line in listing.read_text().splitlines())
        lists[listing.stem] = [line for line in lines if line and not line.startswith("#")]
    return lists


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
        # pip, matplotlib, fontconfig, ... of the bake's own runs (roles/sysprep: sysprep_user_cache_names)
        if (home / ".cache").exists():
            problems.append(f"per-user cache {home / '.cache'}")
    machine_id = root / "etc/machine-id"
    if not machine_id.exists() or machine_id.stat().st_size != 0:
        problems.append("machine-id is not an empty file")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        problems.append("a copied D-Bus machine-id")
    for role, paths in per_instance_paths(root).items():
        problems += [f"secret {p} (role {role})" for p in paths if (root / p.lstrip("/")).exists()]
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
