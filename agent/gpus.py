"""GET /v1/gpus: the last NVML sample, taken in the background so a wedged driver never blocks a request.

A sampler thread sweeps NVML every `gpu.interval_s`. Requests only read the last sweep. When a sweep has
been inside NVML for longer than `gpu.call_timeout_s` (a hung driver), it is left to finish on its own and
the answer says the sample is stale and how old it is, as nvidia_gpu_exporter does with its timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from prometheus_client.core import Metric

from agent import collectors, nvml, services
from agent.config import Config
from agent.openapi import REQUIRED, operation

log = logging.getLogger(__name__)
bp = Blueprint("gpus", __name__)
SERVICE = "gpus"

OPENAPI = {
    "/v1/gpus": {
        "get": operation(
            "Per-GPU usage from NVML with the NVML state (ok, no-driver, library-not-found, gpu-lost, "
            "error), driver and CUDA versions, and the sample's age; unsupported fields are null",
            _200="the last sample",
            schema=REQUIRED(["gpus", "nvml"], gpus="array", nvml="object"),
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
    collectors.register(app, "gpu", collect_metrics)


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


GPU_LABELS = ["gpu", "uuid", "model"]
# (metric suffix, help, field in /v1/gpus, scale to the metric's unit)
GPU_GAUGES = [
    ("gpu_utilization_ratio", "GPU busy time over the last sample period", "utilization_gpu_pct", 0.01),
    ("gpu_memory_utilization_ratio", "Memory controller busy time", "utilization_memory_pct", 0.01),
    ("gpu_memory_used_bytes", "GPU memory in use", "memory_used_bytes", 1),
    ("gpu_memory_total_bytes", "GPU memory installed", "memory_total_bytes", 1),
    ("gpu_temperature_celsius", "GPU core temperature", "temperature_c", 1),
    ("gpu_power_draw_watts", "Power drawn by the board", "power_draw_w", 1),
    ("gpu_power_limit_watts", "Enforced power limit", "power_limit_w", 1),
    ("gpu_sm_clock_hertz", "Streaming multiprocessor clock", "sm_clock_mhz", 1e6),
    ("gpu_memory_clock_hertz", "Memory clock", "memory_clock_mhz", 1e6),
]


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    report = sampler(app).report()
    sweep = report.sweep
    state = collectors.gauge("nvml_state", "1 for the current NVML state of the agent", ["state"])
    for name in nvml.STATES:
        state.add_metric([name], 1.0 if sweep.state == name else 0.0)
    out: list[Metric] = [state]
    age = collectors.gauge("gpu_sample_age_seconds", "Age of the NVML sample these GPU figures come from")
    if report.age_s is not None:
        age.add_metric([], report.age_s)
    out.append(age)
    stale = collectors.gauge(
        "gpu_sample_stale", "1 when the NVML sample is stale (a call hung or the sampler stopped)"
    )
    stale.add_metric([], 1.0 if report.stale else 0.0)
    out.append(stale)
    info = collectors.gauge(
        "gpu_info", "GPU identity", [*GPU_LABELS, "pci_bus_id", "driver_version", "cuda_version"]
    )
    families = {suffix: collectors.gauge(suffix, text, GPU_LABELS) for suffix, text, _, _ in GPU_GAUGES}
    procs = collectors.gauge(
        "gpu_process_memory_used_bytes", "GPU memory used per process", [*GPU_LABELS, "pid", "process"]
    )
    xid = collectors.gauge(
        "gpu_last_xid_timestamp_seconds", "Time of the last critical Xid event", [*GPU_LABELS, "xid"]
    )
    for gpu in sweep.gpus:
        labels = [str(gpu["index"]), gpu["uuid"], gpu["name"] or ""]
        info.add_metric(
            [*labels, gpu["pci_bus_id"] or "", sweep.driver_version or "", sweep.cuda_version or ""], 1.0
        )
        for suffix, _, key, scale in GPU_GAUGES:
            if gpu[key] is not None:
                families[suffix].add_metric(labels, gpu[key] * scale)
        for proc in gpu["processes"] or []:
            if proc["memory_used_bytes"] is not None:
                procs.add_metric([*labels, str(proc["pid"]), proc["name"] or ""], proc["memory_used_bytes"])
        if gpu["last_xid"]:
            xid.add_metric([*labels, str(gpu["last_xid"]["xid"])], gpu["last_xid"]["time"])
    out += [info, *families.values(), procs, xid]
    # No GPU stack at all is a healthy answer for this collector; a lost GPU or a hung driver is not.
    ok = not report.stale and sweep.state in (nvml.OK, nvml.NO_DRIVER, nvml.LIBRARY_NOT_FOUND)
    return iter(out), ok
