"""Background work the agent runs beside its HTTP routes (samplers, pre-warm jobs)."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from flask import Flask

log = logging.getLogger(__name__)
KEY = "scipioncloud.services"


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def register(app: Flask, name: str, service: Service) -> None:
    app.extensions.setdefault(KEY, {})[name] = service


def get(app: Flask, name: str):
    return app.extensions[KEY][name]


def start_all(app: Flask) -> None:
    for name, service in app.extensions.get(KEY, {}).items():
        log.info("starting %s", name)
        service.start()


def stop_all(app: Flask) -> None:
    for name, service in reversed(list(app.extensions.get(KEY, {}).items())):
        try:
            service.stop()
        except Exception:  # one failing stop must not keep the others running
            log.exception("stopping %s failed", name)


class Periodic:
    """Calls `tick` every `interval_s` on a daemon thread until stopped; the loop every sampler shares.
    `immediately` runs the first tick at start rather than one interval later. A tick that raises is logged
    and the next one runs on schedule: the guard lives here once, for every service."""

    def __init__(self, name: str, interval_s: float, tick, *, immediately: bool = False) -> None:
        self.name = name
        self.interval_s = max(interval_s, 0.01)  # 0 in the config must not spin a core
        self.tick = tick
        self.immediately = immediately
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _guarded_tick(self) -> None:
        try:
            self.tick()
        except Exception:  # a bug or an odd library must not end the loop: the next tick may succeed
            log.exception("%s: tick failed; the next one runs in %g s", self.name, self.interval_s)

    def _run(self) -> None:
        if self.immediately:
            self._guarded_tick()
        while not self._stop.wait(self.interval_s):
            self._guarded_tick()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5) -> None:
        """Stop; a thread stuck in a call (a wedged driver) is a daemon and is left behind after timeout_s."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
