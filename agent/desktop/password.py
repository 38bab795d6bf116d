"""The VNC password: eight characters (all VNC authentication uses), stored obfuscated by `vncpasswd -f`
in a file only the desktop user can read, mirrored into the status page's htpasswd file."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

# No look-alike characters: people type this from a console log.
ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
LENGTH = 8
VNCPASSWD = {"turbovnc": "/opt/TurboVNC/bin/vncpasswd", "tigervnc": "tigervncpasswd"}


class PasswordError(RuntimeError):
    pass


def generate() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def _run(args: list[str], secret: str) -> bytes:
    try:
        result = subprocess.run(args, input=(secret + "\n").encode(), capture_output=True, timeout=30)
    except FileNotFoundError:
        raise PasswordError(f"{args[0]} is not installed; install the desktop role's VNC server") from None
    if result.returncode != 0:
        # stderr of these tools never echoes the password, but keep only its first line anyway.
        reason = result.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise PasswordError(f"{args[0]} failed ({result.returncode}): {' '.join(reason)}")
    return result.stdout


def write_private(path: Path, data: bytes, uid: int = -1, gid: int = -1, mode: int = 0o600) -> None:
    """Replace `path` atomically; the new file is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def store_vnc(password: str, path: Path, vnc: str, uid: int, gid: int) -> None:
    """`vnc`: the VNC server's name (turbovnc, tigervnc) or its vncpasswd program's path."""
    program = VNCPASSWD.get(vnc, vnc)
    obfuscated = _run([program, "-f"], password)
    if len(obfuscated) != 8:
        raise PasswordError(f"{program} -f wrote {len(obfuscated)} bytes, expected 8")
    if path.parent.name == ".vnc" and not path.parent.exists():
        path.parent.mkdir(mode=0o700)
        os.chown(path.parent, uid, gid)
    write_private(path, obfuscated, uid, gid)


def store_htpasswd(user: str, password: str, path: Path, gid: int = -1) -> None:
    """SHA-512 crypt line for nginx auth_basic (mode 0640, group of the web server)."""
    hashed = _run(["openssl", "passwd", "-6", "-stdin"], password).decode().strip()
    write_private(path, f"{user}:{hashed}\n".encode(), -1, gid, 0o640)


def update_info_file(path: Path, password: str) -> bool:
    """Keep the root-only summary file true after a rotation; it is made at first boot."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    write_private(path, re.sub(r"(?m)\bpassword=\S*", f"password={password}", text).encode())
    return True
