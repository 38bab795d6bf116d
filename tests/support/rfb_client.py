"""A minimal VNC client for tests: version handshake, VNC authentication (DES challenge), ServerInit.

Enough to prove that a server accepts the right password, refuses a wrong one, and is a desktop that
takes a new connection (ServerInit carries the framebuffer size and the desktop name).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes


class VncRefused(Exception):
    """The server answered but refused us (wrong password, too many failures); the text says why."""


@dataclass
class ServerInit:
    width: int
    height: int
    name: str


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {len(data)} of {n} bytes")
        data += chunk
    return data


def _vnc_response(password: str, challenge: bytes) -> bytes:
    # VNC's DES key is the password (8 bytes, zero padded) with each byte's bits reversed.
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - the protocol's own
    return encryptor.update(challenge) + encryptor.finalize()


def connect(port: int, password: str, host: str = "127.0.0.1", timeout: float = 5.0) -> ServerInit:
    """Authenticate and read ServerInit; raise VncRefused on a refusal, OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        version = _recv(conn, 12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"not an RFB server: {version!r}")
        conn.sendall(b"RFB 003.008\n")
        count = _recv(conn, 1)[0]
        if count == 0:
            length = struct.unpack(">I", _recv(conn, 4))[0]
            raise VncRefused(_recv(conn, length).decode(errors="replace"))
        types = _recv(conn, count)
        if 2 not in types:
            raise ConnectionError(f"server offers no VNC authentication (types {list(types)})")
        conn.sendall(b"\x02")
        conn.sendall(_vnc_response(password, _recv(conn, 16)))
        if struct.unpack(">I", _recv(conn, 4))[0] != 0:
            length = struct.unpack(">I", _recv(conn, 4))[0]
            raise VncRefused(_recv(conn, length).decode(errors="replace") or "authentication failed")
        conn.sendall(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", _recv(conn, 4))
        _recv(conn, 16)  # pixel format
        name_length = struct.unpack(">I", _recv(conn, 4))[0]
        return ServerInit(width, height, _recv(conn, name_length).decode(errors="replace"))
