"""One bandwidth limit shared by every transfer thread: a token bucket in bytes per second."""

from __future__ import annotations

import re
import threading
import time

from agent.s3.errors import BadRequest

UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9}
UNITS.update({"kib": 1024, "mib": 1024**2, "gib": 1024**3})
RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*?)(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str | None) -> float | None:
    """'50MB' / '50MB/s' / '1.5GiB' / '800k' -> bytes per second; None or '0' -> no limit."""
    if text is None:
        return None
    match = RATE.match(text)
    if not match or match[2].lower() not in UNITS:
        raise BadRequest(f"--bwlimit {text!r}: give a rate such as 50MB, 200MiB or 1GB (per second)")
    value = float(match[1]) * UNITS[match[2].lower()]
    return value or None


class TokenBucket:
    """`take(n)` blocks until n bytes may pass; the burst is one second's worth (or n, if larger)."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self.rate = bytes_per_s
        self.tokens = bytes_per_s or 0.0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:  # one waiter at a time keeps the order fair and the arithmetic simple
            now = time.monotonic()
            self.tokens = min(max(self.rate, n), self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            if self.tokens < 0:
                time.sleep(-self.tokens / self.rate)
