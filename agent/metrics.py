"""GET /metrics: Prometheus text format from the agent's own CollectorRegistry (never the global one).

One custom Collector reads the samplers' last figures, so a scrape never waits for NVML. Names carry their
units as dcgm-exporter and nvidia_gpu_exporter name theirs; each part reports its success and duration as
node_exporter's collectors do (`scipioncloud_scrape_collector_success{collector=...}`). Figures a GPU does
not support are left out, never written as sentinel numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import psutil
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import gpus, host, idle, nvml, usage, volumes
from agent.config import Config
from agent.openapi import operation

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)
REGISTRY_KEY = "scipioncloud.metrics.registry"
PREFIX = "scipioncloud_"
# Text format 0.0.4: what every Prometheus (Debian's 2.x included) negotiates; generate_latest writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GPU_LABELS = ["gpu", "uuid", "model"]

OPENAPI = {
    "/metrics": {
        "get": {
            **operation("Prometheus text format (GPU, host, idle, per-collector success and duration)"),
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": {
                    "description": "no token",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
    }
}

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


def gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


def collect_gpu(app: Flask) -> tuple[Iterator[Metric], bool]:
    report = gpus.sampler(app).report()
    sweep = report.sweep
    state = gauge("nvml_state", "1 for the current NVML state of the agent", ["state"])
    for name in nvml.STATES:
        state.add_metric([name], 1.0 if sweep.state == name else 0.0)
    out: list[Metric] = [state]
    age = gauge("gpu_sample_age_seconds", "Age of the NVML sample these GPU figures come from")
    if report.age_s is not None:
        age.add_metric([], report.age_s)
    out.append(age)
    stale = gauge("gpu_sample_stale", "1 when the NVML sample is stale (a call hung or the sampler stopped)")
    stale.add_metric([], 1.0 if report.stale else 0.0)
    out.append(stale)
    info = gauge("gpu_info", "GPU identity", [*GPU_LABELS, "pci_bus_id", "driver_version", "cuda_version"])
    families = {suffix: gauge(suffix, text, GPU_LABELS) for suffix, text, _, _ in GPU_GAUGES}
    procs = gauge(
        "gpu_process_memory_used_bytes", "GPU memory used per process", [*GPU_LABELS, "pid", "process"]
    )
    xid = gauge("gpu_last_xid_timestamp_seconds", "Time of the last critical Xid event", [*GPU_LABELS, "xid"])
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


def collect_host(app: Flask) -> tuple[Iterator[Metric], bool]:
    out: list[Metric] = []
    total, per_core = host.sampler(app).meter.current()
    cpu = gauge("host_cpu_utilization_ratio", "Share of all CPU time spent busy over the last interval")
    core = gauge("host_cpu_core_utilization_ratio", "Share of one core's time spent busy", ["cpu"])
    if total is not None:
        cpu.add_metric([], total / 100)
        for index, pct in enumerate(per_core or []):
            core.add_metric([str(index)], pct / 100)
    out += [cpu, core]
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    for name, text, value in (
        ("host_memory_total_bytes", "Physical memory", memory.total),
        ("host_memory_available_bytes", "Memory available without swapping", memory.available),
        ("host_swap_total_bytes", "Swap space", swap.total),
        ("host_swap_used_bytes", "Swap in use", swap.used),
        ("host_uptime_seconds", "Time since boot", time.time() - psutil.boot_time()),
    ):
        family = gauge(name, text)
        family.add_metric([], value)
        out.append(family)
    load = gauge("host_load_average", "Run-queue load average", ["window"])
    for window, value in zip(("1m", "5m", "15m"), psutil.getloadavg(), strict=True):
        load.add_metric([window], value)
    out.append(load)
    identity = host.sampler(app).identity.identity
    if identity:
        info = gauge(
            "host_instance_info", "EC2 instance identity", ["instance_id", "instance_type", "region", "az"]
        )
        info.add_metric(
            [
                identity["instance_id"],
                identity["instance_type"],
                identity["region"],
                identity["availability_zone"],
            ],
            1.0,
        )
        out.append(info)
    return iter(out), True


def collect_idle(app: Flask) -> tuple[Iterator[Metric], bool]:
    state = idle.monitor(app).current()
    idle_gauge = gauge("idle", "1 when every idle signal has been idle for the whole window")
    idle_gauge.add_metric([], 1.0 if state["idle"] else 0.0)
    quiet = gauge("idle_quiet_seconds", "How long every idle signal has said idle")
    quiet.add_metric([], state["quiet_for_s"])
    busy = gauge("idle_signal_busy", "1 when this idle signal says busy", ["signal"])
    for signal in state["signals"]:
        busy.add_metric([signal["name"]], 1.0 if signal["busy"] else 0.0)
    decision = gauge("idle_decision", "1 for the idle rule's current decision", ["decision"])
    for name in (idle.STAY, idle.WARN, idle.STOP):
        decision.add_metric([name], 1.0 if state["decision"]["decision"] == name else 0.0)
    return iter([idle_gauge, quiet, busy, decision]), True


COLLECTORS: dict[str, Callable[[Flask], tuple[Iterator[Metric], bool]]] = {
    "gpu": collect_gpu,
    "host": collect_host,
    "idle": collect_idle,
    "prewarm": volumes.collect_metrics,
    "usage": usage.collect_metrics,
}


class AgentCollector(Collector):
    """Runs each part; a part that raises is reported as failed and the others still come out."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        success = gauge("scrape_collector_success", "1 when the collector succeeded", ["collector"])
        duration = gauge("scrape_collector_duration_seconds", "How long the collector took", ["collector"])
        for name, collector in COLLECTORS.items():
            started = time.perf_counter()
            try:
                metrics, ok = collector(self.app)
                yield from list(metrics)
            except Exception:
                log.exception("metrics collector %s failed", name)
                ok = False
            duration.add_metric([name], time.perf_counter() - started)
            success.add_metric([name], 1.0 if ok else 0.0)
        yield success
        yield duration


def init_app(app: Flask, config: Config) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(app))
    app.extensions[REGISTRY_KEY] = registry


@bp.get("/metrics")
def get_metrics():
    body = generate_latest(current_app.extensions[REGISTRY_KEY])
    return Response(body, content_type=CONTENT_TYPE)
