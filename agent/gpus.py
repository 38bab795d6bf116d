"""GET /v1/gpus: the last NVML sample, taken in the background so a wedged driver never blocks a request.

A sampler thread sweeps NVML every `gpu.interval_s`. Requests only read the last sweep. When a sweep has
been inside NVML for longer than `gpu.call_timeout_s` (a hung driver), it is left to finish on its own and
the answer says the sample is stale and how old it is, as nvidia_gpu_exporter does with its timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

from agent import nvml, services
from agent.config import Config
from agent.openapi import operation

log = logging.getLogger(__name__)
bp = Blueprint("gpus", __name__)
SERVICE = "gpus"

OPENAPI = {
    "/v1/gpus": {
        "get": operation(
            "Per-GPU usage from NVML with the NVML state (ok, no-driver, library-not-found, gpu-lost, "
            "error), driver and CUDA versions, and the sample's age; unsupported fields are null",
            _200="the last sample",
            _401="no token",
        )
    }
}


@dataclass(frozen=True)
class Report:
    """What a reader of the sampler sees: the last sweep and how fresh it is."""

    sweep: nvml.Sweep
    age_s: float | None
    stale: bool
    stale_reason: str | None

    @property
    def gpus(self) -> list[dict[str, Any]]:
        return self.sweep.gpus


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class GpuSampler:
    """Runs NVML sweeps on its own daemon thread; `report()` never touches NVML."""

    def __init__(self, reader: nvml.Reader, interval_s: float, call_timeout_s: float) -> None:
        self.reader = reader
        self.interval_s = max(interval_s, 0.01)  # 0 in the config must not spin a core
        self.call_timeout_s = call_timeout_s
        self._lock = threading.Lock()
        self._last: nvml.Sweep | None = None
        self._last_at: float | None = None  # time.monotonic() of the last finished sweep
        self._in_flight_since: float | None = None
        self._loop = services.Periodic("gpu-sampler", self.interval_s, self.sample_now, immediately=True)
        self._first = threading.Event()

    def sample_now(self) -> nvml.Sweep:
        """One sweep on the calling thread (the sampler thread, or a test)."""
        with self._lock:
            self._in_flight_since = time.monotonic()
        try:
            sweep = self.reader.sweep()
        except Exception as exc:  # a bug or an odd library must not kill the sampler
            log.exception("NVML sweep failed")
            sweep = nvml.Sweep(state=nvml.ERROR, error=f"sweep failed: {exc}", taken_at=time.time())
        with self._lock:
            if sweep.state != (self._last.state if self._last else nvml.OK):
                log.warning("NVML state %s: %s", sweep.state, sweep.error)
            self._last, self._last_at, self._in_flight_since = sweep, time.monotonic(), None
        self._first.set()
        return sweep

    def start(self) -> None:
        self._loop.start()
        self._first.wait(self.call_timeout_s)  # serve the first request with data when NVML is quick

    def stop(self) -> None:
        self._loop.stop(self.call_timeout_s)

    def report(self) -> Report:
        now = time.monotonic()
        with self._lock:
            last, last_at, in_flight = self._last, self._last_at, self._in_flight_since
        if last is None or last_at is None:
            waited = f" (an NVML call has not returned for {now - in_flight:.1f} s)" if in_flight else ""
            sweep = nvml.Sweep(state=nvml.ERROR, error="no NVML sample yet" + waited)
            return Report(sweep, None, True, "no sample yet" + waited)
        age = now - last_at
        reason = None
        if in_flight is not None and now - in_flight > self.call_timeout_s:
            reason = (
                f"an NVML call has not returned for {now - in_flight:.1f} s (hung driver?); "
                f"showing the sample from {age:.1f} s ago"
            )
        elif age > self.interval_s + self.call_timeout_s + 1:
            reason = f"the sampler has not produced a sample for {age:.1f} s"
        return Report(last, age, reason is not None, reason)


def sampler(app: Flask) -> GpuSampler:
    return services.get(app, SERVICE)


def init_app(app: Flask, config: Config) -> None:
    services.register(
        app, SERVICE, GpuSampler(nvml.Reader(), config.gpu.interval_s, config.gpu.call_timeout_s)
    )


def report_json(report: Report) -> dict[str, Any]:
    sweep = report.sweep
    gpus = []
    for gpu in sweep.gpus:
        xid = gpu.get("last_xid")
        gpus.append({**gpu, "last_xid": {"xid": xid["xid"], "time": iso(xid["time"])} if xid else None})
    return {
        "nvml": {
            "state": sweep.state,
            "error": sweep.error,
            "driver_version": sweep.driver_version,
            "cuda_version": sweep.cuda_version,
            "sampled_at": iso(sweep.taken_at) if sweep.taken_at else None,
            "sample_age_s": round(report.age_s, 3) if report.age_s is not None else None,
            "stale": report.stale,
            "stale_reason": report.stale_reason,
        },
        "gpus": gpus,
    }


@bp.get("/v1/gpus")
def get_gpus():
    return jsonify(report_json(sampler(current_app).report()))
