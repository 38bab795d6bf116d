"""The agent's bearer token: made once per instance (never baked into an image), kept mode 0600."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class TokenError(RuntimeError):
    pass


def ensure_token(path: Path) -> str:
    """Return the token stored at `path`, creating it (mode 0600) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token


def read_token(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Like ssh with a private key: a token others can read is no secret any more.
        raise TokenError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    token = path.read_text().strip()
    if len(token) < 16:
        raise TokenError(f"{path} holds no usable token (under 16 characters); delete it to make a new one")
    return token
