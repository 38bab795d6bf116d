"""The desktop line the instance's first boot writes to its serial console, and waiting for it.

Format, one line (it may follow a kernel or systemd prefix on the same line):

    SCIPIONCLOUD-DESKTOP url=https://HOST/ password=SECRET

`url` and `password` hold no spaces; when the line appears more than once (the password was rotated and
the boot wrote it again) the last one counts. EC2's GetConsoleOutput is the only reader needed: the
operator's AWS rights already allow it, and no port has to be open.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

MARK = "SCIPIONCLOUD-DESKTOP"
LINE = re.compile(MARK + r"\s+url=(?P<url>https?://\S+)\s+password=(?P<password>\S+)")


@dataclass(frozen=True)
class Desktop:
    url: str
    password: str


def parse(console_text: str | None) -> Desktop | None:
    """The last desktop line in the console text, or None when there is none yet."""
    matches = list(LINE.finditer(console_text or ""))
    if not matches:
        return None
    last = matches[-1]
    return Desktop(url=last["url"], password=last["password"])


def read_console(ec2, instance_id: str) -> str:
    """The instance's serial console text (boto3 already decodes the base64)."""
    return ec2.get_console_output(InstanceId=instance_id).get("Output") or ""


def wait_for_desktop(
    read: Callable[[], str],
    timeout_s: float = 1200,
    interval_s: float = 15,
    on_poll: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Desktop | None:
    """Poll `read` until it shows a desktop line; None after `timeout_s` (first boot can take minutes)."""
    start = clock()
    while True:
        found = parse(read())
        if found:
            return found
        elapsed = clock() - start
        if elapsed >= timeout_s:
            return None
        if on_poll:
            on_poll(elapsed)
        sleep(min(interval_s, max(0.0, timeout_s - elapsed)))
