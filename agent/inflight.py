"""Work the agent itself has in flight (pre-warm, transfer, archive jobs): while any is registered, the idle
rule says busy. A job registers in one line and is forgotten when it ends:

    with inflight.track(app, "prewarm", "/dev/nvme1n1"):
        ...                                     # or: handle = inflight.begin(...); inflight.end(app, handle)

A manager built in init_app may keep `inflight.registry(app)` and call `registry.track(kind, what)` itself.
A job that runs a child process may pass its `pid`: an entry whose process has died is dropped, so a crashed
job can never keep the machine on forever.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
from flask import Flask

KEY = "scipioncloud.inflight"


@dataclass(frozen=True)
class Job:
    id: str
    kind: str  # "prewarm", "transfer", "archive", ...
    what: str  # the device, file or object it works on
    started: float
    pid: int | None = None

    def alive(self) -> bool:
        return self.pid is None or psutil.pid_exists(self.pid)


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)

    def begin(self, kind: str, what: str, *, pid: int | None = None) -> str:
        with self._lock:
            job = Job(f"{kind}-{next(self._ids)}", kind, what, time.time(), pid)
            self._jobs[job.id] = job
            return job.id

    def end(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    @contextmanager
    def track(self, kind: str, what: str, *, pid: int | None = None) -> Iterator[str]:
        """For code that holds the registry rather than the app (a job manager built in init_app)."""
        job_id = self.begin(kind, what, pid=pid)
        try:
            yield job_id
        finally:
            self.end(job_id)

    def active(self) -> list[Job]:
        with self._lock:
            for job_id in [j.id for j in self._jobs.values() if not j.alive()]:
                del self._jobs[job_id]
            return list(self._jobs.values())


def registry(app: Flask) -> Registry:
    return app.extensions.setdefault(KEY, Registry())


def begin(app: Flask, kind: str, what: str, *, pid: int | None = None) -> str:
    return registry(app).begin(kind, what, pid=pid)


def end(app: Flask, job_id: str) -> None:
    registry(app).end(job_id)


def track(app: Flask, kind: str, what: str, *, pid: int | None = None):
    """Context manager: the job is in flight inside the block."""
    return registry(app).track(kind, what, pid=pid)
