"""The warning before the idle action, shown in the desktop session: a libnotify notification sent with
`notify-send` (the libnotify client) on the session's D-Bus, as the desktop user, with a "Keep running"
action. notify-send --wait prints the key of the action the user chose; "default" (also a click on the
notification itself) postpones the action.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import subprocess
import threading
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)
KEEP = "default"  # libnotify's default action: a click on the notification or its "Keep running" button


def find_session_bus(uid: int, display: int) -> str | None:
    """The bus the desktop session runs (startxfce4 starts its own through dbus-launch): read from the
    environment of one of the user's processes on that display, as scripts that notify a session do."""
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"] is None or process.info["uids"].real != uid:
                continue
            environ = process.environ()
        except psutil.Error:
            continue
        if environ.get("DISPLAY", "").split(".")[0] == f":{display}" and environ.get(
            "DBUS_SESSION_BUS_ADDRESS"
        ):
            return environ["DBUS_SESSION_BUS_ADDRESS"]
    return None


def session_env(user: str, display: int, bus: str) -> dict[str, str]:
    """DISPLAY and the session bus: the configured one, else the session's own, else systemd's user bus."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DISPLAY": f":{display}"}
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = None
    if not bus and uid is not None:
        bus = find_session_bus(uid, display) or f"unix:path=/run/user/{uid}/bus"
    env["DBUS_SESSION_BUS_ADDRESS"] = bus
    return env


def notify_argv(command: str, user: str, title: str, body: str, expire_s: float) -> list[str]:
    argv = [
        *shlex.split(command),
        "--app-name=ScipionCloud",
        "--urgency=critical",
        f"--expire-time={int(expire_s * 1000)}",
        f"--action={KEEP}=Keep running",
        "--wait",
        title,
        body,
    ]
    if user != pwd.getpwuid(os.getuid()).pw_name:
        argv = ["runuser", "-u", user, "--", *argv]  # the session bus accepts only its own user
    return argv


class Notifier:
    """Sends one warning at a time; `on_keep` runs when the user picks "Keep running"."""

    def __init__(self, command: str, user: str, display: int, bus: str) -> None:
        self.command, self.user, self.display, self.bus = command, user, display, bus
        self.last_result: str | None = None
        self._thread: threading.Thread | None = None

    def warn(self, title: str, body: str, expire_s: float, on_keep: Callable[[], None]) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # the previous warning is still on screen
        argv = notify_argv(self.command, self.user, title, body, expire_s)
        env = session_env(self.user, self.display, self.bus)
        self._thread = threading.Thread(
            target=self._run, args=(argv, env, expire_s, on_keep), name="idle-warning", daemon=True
        )
        self._thread.start()

    def _run(self, argv: list[str], env: dict[str, str], expire_s: float, on_keep) -> None:
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=expire_s + 30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.last_result = f"could not notify the desktop: {exc}"
            log.warning("%s", self.last_result)
            return
        if done.returncode != 0:
            self.last_result = f"notify-send exit {done.returncode}: {done.stderr.strip()[:200]}"
            log.warning("idle warning not shown on the desktop: %s", self.last_result)
            return
        chosen = done.stdout.strip()
        self.last_result = f"shown; user chose {chosen!r}" if chosen else "shown; no answer"
        log.info("idle warning on the desktop: %s", self.last_result)
        if chosen == KEEP:
            on_keep()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
