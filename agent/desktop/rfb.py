"""Is a VNC server ready? It is when its port speaks RFB: the first 12 bytes are 'RFB 003.00x\\n'."""

from __future__ import annotations

import re
import socket
import time

BANNER = re.compile(rb"^RFB 003\.00\d\n$")


def banner(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bytes | None:
    """The server's protocol banner, or None when nothing RFB answers on the port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            data = b""
            while len(data) < 12:
                chunk = conn.recv(12 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data if BANNER.match(data) else None


def wait_for_banner(port: int, timeout: float, host: str = "127.0.0.1") -> bytes | None:
    deadline = time.monotonic() + timeout
    while True:
        found = banner(port, host, timeout=min(1.0, max(0.05, deadline - time.monotonic())))
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)
