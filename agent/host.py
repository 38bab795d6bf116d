"""GET /v1/host: CPU, load, memory, swap, disks, network, uptime, and the EC2 instance identity.

CPU usage is a rate, so a sampler thread keeps the last interval's figures (the idle rule reads them too).
The instance identity comes once from IMDSv2 (token PUT, then the identity document) on a background thread
with a short timeout: off EC2 it is null and no request ever waits for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
from flask import Blueprint, Flask, current_app, jsonify
from prometheus_client.core import Metric

from agent import collectors, services
from agent.config import Config
from agent.imds import ImdsClient, ImdsUnavailable
from agent.openapi import REQUIRED, operation

log = logging.getLogger(__name__)
bp = Blueprint("host", __name__)
SERVICE = "host"

OPENAPI = {
    "/v1/host": {
        "get": operation(
            "CPU (total and per core), load, memory, swap, disks, network counters, uptime, and the EC2 "
            "instance identity (null off EC2)",
            _200="host figures",
            schema=REQUIRED(
                ["cpu", "memory", "disks", "uptime_s"], cpu="object", memory="object", disks="array"
            ),
            _401="no token",
        )
    }
}


class CpuMeter:
    """CPU utilisation between two readings of /proc/stat (psutil.cpu_times), total and per core."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = self._read()
        self._base_at = time.monotonic()
        self.total_pct: float | None = None
        self.per_core_pct: list[float] | None = None

    @staticmethod
    def _read() -> tuple[Any, list[Any]]:
        return psutil.cpu_times(), psutil.cpu_times(percpu=True)

    @staticmethod
    def _busy_pct(before, after) -> float:
        def idle(t) -> float:  # iowait counts as idle, as top counts it
            return t.idle + getattr(t, "iowait", 0.0)

        elapsed = sum(after) - sum(before)
        if elapsed <= 0:
            return 0.0
        return round(max(0.0, min(100.0, 100.0 * (1 - (idle(after) - idle(before)) / elapsed))), 1)

    def _compute(self, before, after) -> tuple[float, list[float]]:
        per_core = [self._busy_pct(b, a) for b, a in zip(before[1], after[1], strict=False)]
        return self._busy_pct(before[0], after[0]), per_core

    def sample(self) -> None:
        """Close the current interval and start the next."""
        now = self._read()
        with self._lock:
            self.total_pct, self.per_core_pct = self._compute(self._base, now)
            self._base, self._base_at = now, time.monotonic()

    def current(self) -> tuple[float | None, list[float] | None]:
        """The last closed interval; before the first one, the time since the meter was made."""
        with self._lock:
            if self.total_pct is not None:
                return self.total_pct, self.per_core_pct
            if time.monotonic() - self._base_at < 0.05:
                return None, None
            return self._compute(self._base, self._read())


class InstanceIdentity:
    """The EC2 identity document through IMDSv2 (agent.imds), fetched once in the background."""

    def __init__(self, base_url: str, timeout_s: float, attempts: int = 3) -> None:
        self.client = ImdsClient(base_url, timeout_s, token_ttl_s=21600)  # refuses a non-http(s) URL
        self.base_url = self.client.base_url
        self.attempts = attempts
        self.state = "pending"  # pending -> found | unavailable
        self.error: str | None = None
        self.identity: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None

    def fetch(self) -> None:
        for attempt in range(self.attempts):
            try:
                doc = self.client.identity_document()
                self.identity = {
                    "instance_id": doc["instanceId"],
                    "instance_type": doc["instanceType"],
                    "region": doc["region"],
                    "availability_zone": doc["availabilityZone"],
                    "image_id": doc.get("imageId"),
                }
                self.state, self.error = "found", None
                return
            except (ImdsUnavailable, KeyError, TypeError) as exc:
                missing = not isinstance(exc, ImdsUnavailable)
                self.error = f"identity document lacks {exc}" if missing else str(exc)
                if attempt + 1 < self.attempts:
                    time.sleep(0.2 * (attempt + 1))
        self.state = "unavailable"
        log.info("no EC2 instance identity (%s); instance is reported as null", self.error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.fetch, name="imds-identity", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error}


class HostSampler:
    """Closes a CPU interval every `interval_s`; starts the one-off identity lookup."""

    def __init__(self, meter: CpuMeter, identity: InstanceIdentity, interval_s: float) -> None:
        self.meter = meter
        self.identity = identity
        self._loop = services.Periodic("host-sampler", interval_s, meter.sample)

    @property
    def interval_s(self) -> float:
        return self._loop.interval_s

    def start(self) -> None:
        self.identity.start()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


def sampler(app: Flask) -> HostSampler:
    return services.get(app, SERVICE)


def init_app(app: Flask, config: Config) -> None:
    identity = InstanceIdentity(config.host.imds_url, config.host.imds_timeout_s)
    services.register(app, SERVICE, HostSampler(CpuMeter(), identity, config.host.interval_s))
    collectors.register(app, "host", collect_metrics)


def disks() -> list[dict[str, Any]]:
    """Mounted block-device filesystems (psutil skips nodev ones such as proc, tmpfs and NFS)."""
    result, seen = [], set()
    for part in psutil.disk_partitions(all=False):
        if part.mountpoint in seen:
            continue
        seen.add(part.mountpoint)
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:  # vanished or unreadable mountpoint: skip, the others still count
            continue
        result.append(
            {
                "mountpoint": part.mountpoint,
                "device": part.device,
                "fstype": part.fstype,
                "size_bytes": usage.total,
                "used_bytes": usage.used,
                "free_bytes": usage.free,
            }
        )
    return result


def network() -> list[dict[str, Any]]:
    return [
        {
            "interface": name,
            "bytes_sent": c.bytes_sent,
            "bytes_recv": c.bytes_recv,
            "packets_sent": c.packets_sent,
            "packets_recv": c.packets_recv,
            "errors_in": c.errin,
            "errors_out": c.errout,
            "drops_in": c.dropin,
            "drops_out": c.dropout,
        }
        for name, c in sorted(psutil.net_io_counters(pernic=True).items())
    ]


def snapshot(host: HostSampler) -> dict[str, Any]:
    total, per_core = host.meter.current()
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    load = os.getloadavg()
    boot = psutil.boot_time()
    return {
        "cpu": {"count": psutil.cpu_count(), "utilization_pct": total, "per_core_pct": per_core},
        "load": {"1m": load[0], "5m": load[1], "15m": load[2]},
        "memory": {
            "total_bytes": memory.total,
            "available_bytes": memory.available,
            "used_bytes": memory.total - memory.available,
        },
        "swap": {"total_bytes": swap.total, "used_bytes": swap.used, "free_bytes": swap.free},
        "disks": disks(),
        "network": network(),
        "uptime_s": round(time.time() - boot, 1),
        "boot_time": boot,
        "instance": host.identity.identity,
        "instance_lookup": host.identity.as_json(),
    }


@bp.get("/v1/host")
def get_host():
    return jsonify(snapshot(sampler(current_app)))


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    out: list[Metric] = []
    total, per_core = sampler(app).meter.current()
    cpu = collectors.gauge(
        "host_cpu_utilization_ratio", "Share of all CPU time spent busy over the last interval"
    )
    core = collectors.gauge("host_cpu_core_utilization_ratio", "Share of one core's time spent busy", ["cpu"])
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
        family = collectors.gauge(name, text)
        family.add_metric([], value)
        out.append(family)
    load = collectors.gauge("host_load_average", "Run-queue load average", ["window"])
    for window, value in zip(("1m", "5m", "15m"), psutil.getloadavg(), strict=True):
        load.add_metric([window], value)
    out.append(load)
    identity = sampler(app).identity.identity
    if identity:
        info = collectors.gauge(
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
