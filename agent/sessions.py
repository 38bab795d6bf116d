"""Is a person at the machine? SSH terminals and the desktop, each with the time since its last input.

- SSH: the login records in utmp (what `who` and `w` read), remote entries only, and for each the idle time
  of its terminal as `w` computes it: now minus the terminal device's access time (the kernel updates it when
  the session reads input, in 8-second steps).
- Desktop: the X server's own idle time (the MIT-SCREEN-SAVER extension) through `xprintidle`, run on the
  desktop's display with its Xauthority: a viewer that is connected but untouched counts as away.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# glibc's struct utmp on Linux (x86_64 and aarch64): 384 bytes; <utmp.h>, bits/utmp.h
UTMP = struct.Struct("<hxxi32s4s32s256shhiii4i20s")
USER_PROCESS = 7


@dataclass(frozen=True)
class Login:
    user: str
    tty: str
    host: str
    pid: int
    idle_s: float | None  # None: the terminal device is gone


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_utmp(path: Path) -> list[tuple[str, str, str, int]]:
    """(user, tty, host, pid) of every USER_PROCESS record; a missing file means nobody logged in."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for offset in range(0, len(data) - UTMP.size + 1, UTMP.size):
        kind, pid, line, _id, user, host, *_ = UTMP.unpack_from(data, offset)
        if kind == USER_PROCESS:
            out.append((_text(user), _text(line), _text(host), pid))
    return out


def ssh_logins(utmp: Path, *, dev: Path = Path("/dev"), now: float | None = None) -> list[Login]:
    """Remote logins whose process still lives (a crashed sshd can leave a stale record)."""
    now = time.time() if now is None else now
    logins = []
    for user, tty, host, pid in read_utmp(utmp):
        if not host or host.startswith(":") or not psutil.pid_exists(pid):
            continue  # local and X terminals (host ":1") are the desktop's, watched through X
        try:
            idle_s = max(0.0, now - os.stat(dev / tty).st_atime)
        except OSError:
            idle_s = None
        logins.append(Login(user, tty, host, pid, idle_s))
    return logins


def x_idle_s(display: str, xauthority: Path | None, *, timeout_s: float = 3.0) -> float:
    """Seconds since the last keyboard or mouse input on `display`; raises RuntimeError when X cannot say."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DISPLAY": display}
    if xauthority is not None:
        env["XAUTHORITY"] = str(xauthority)
    try:
        done = subprocess.run(
            ["xprintidle"], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError:
        raise RuntimeError("xprintidle is not installed (Debian package xprintidle)") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the X server on {display} did not answer in {timeout_s:g} s") from None
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise RuntimeError(f"xprintidle on {display}: {(done.stderr or done.stdout).strip()[:200]}")
    return int(done.stdout) / 1000
