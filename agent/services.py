"""Background work the agent runs beside its HTTP routes (samplers, pre-warm jobs)."""

from __future__ import annotations

import logging
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
