"""GET /v1/usage: what this instance cost, and on what. Every `usage.interval_s` the meter closes an interval
and gives its wall-clock cost (instance price + attached EBS volumes, per second) to exactly one place:

- the Scipion protocols running in it (their run process, its children, and their Slurm jobs' processes on
  this node), split by their share of GPU time (NVML's per-process SM utilisation), else of CPU time, else
  evenly;
- "other work" when something outside Scipion used the GPU or the CPU over the idle threshold;
- "idle" when nobody used the machine.

So attributed + other + idle = the wall-clock cost, by construction, and a test checks it against the price
times the wall time. Figures are kept per UTC day in `state_dir/usage.json`, so a restart loses one
interval at most. Stops made by the idle rule (idle-stops.json) give "money saved by stops".
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from flask import Blueprint, Flask, current_app, jsonify, request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent import collectors, gpus, host, idle, prices, scipion_projects, services, slurm_jobs
from agent.config import Config
from agent.errors import ApiError
from agent.openapi import REQUIRED, operation

log = logging.getLogger(__name__)
bp = Blueprint("usage", __name__)
SERVICE = "usage"
STATE_FILE = "usage.json"
KEEP_DAYS = 400
OTHER = "(other work)"
NO_PROJECT = "(none)"

OPENAPI = {
    "/v1/usage": {
        "get": operation(
            "GPU/CPU/wall time and cost per project, protocol and UTC day; idle time; money saved by stops",
            _200="the usage report (?days=N: the last N days, default 31)",
            schema=REQUIRED(["currency", "days", "totals"], days="array", totals="object"),
            _400="bad days",
            _401="no token",
        )
    }
}


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).date().isoformat()


class Prices:
    """The instance's price per hour and its volumes', from the config or the price table (agent/prices.py,
    the one the CLI's estimates use) by the instance type and region in IMDS. Unknown stays None (costs
    then null, never a guess)."""

    def __init__(self, app: Flask, config: Config) -> None:
        self.app, self.config = app, config
        self._volumes: tuple[float, float] | None = None  # (per hour, looked-up at)
        self._loaded = None  # the price table, read once (a scrape must not parse it)

    def instance_per_hour(self) -> tuple[float | None, str]:
        usage = self.config.usage
        if usage.price_per_hour is not None:
            return usage.price_per_hour, "agent.toml usage.price_per_hour"
        identity = host.sampler(self.app).identity.identity
        if not identity:
            return None, "no instance identity (not on EC2?) and no usage.price_per_hour"
        region_prices = self._table_region(identity["region"])
        if region_prices is None:
            return None, f"no price table entry for region {identity['region']}"
        price = region_prices.instances_per_hour.get(identity["instance_type"])
        if price is None:
            return None, f"no price for {identity['instance_type']} in {identity['region']}"
        return price, f"price table, {identity['instance_type']} in {identity['region']}"

    def _table(self):
        if self._loaded is not None:
            return self._loaded
        path = Path(self.config.usage.prices_file) if self.config.usage.prices_file else None
        try:
            self._loaded = prices.load_table(path)
        except (OSError, ValueError, KeyError):
            log.exception("price table unreadable")
        return self._loaded

    def _table_region(self, region: str):
        table = self._table()
        return None if table is None else table.regions.get(region)

    def volumes_per_hour(self) -> float:
        """Attached EBS volumes (by their EBS serial), priced at usage.volume_type; looked up hourly."""
        now = time.monotonic()
        if self._volumes is not None and now - self._volumes[1] < 3600:
            return self._volumes[0]
        total = 0.0
        try:
            from agent.volumes import blockdev

            devices = [d for d in blockdev.discover(self.config.storage) if d.volume_id]
            identity = host.sampler(self.app).identity.identity
            table = self._table() if identity and devices else None
            region_prices = table.regions.get(identity["region"]) if table and identity else None
            if table is not None and region_prices is not None:
                per_gb_month = region_prices.ebs_per_gb_month.get(self.config.usage.volume_type, 0.0)
                gib = sum(d.size for d in devices) / 2**30
                total = gib * per_gb_month / table.hours_per_month
        except Exception:  # no lsblk, no table: the volumes' share is left out, and said so in the log
            log.exception("could not price the attached volumes")
        self._volumes = (total, now)
        return total


class UsageMeter:
    def __init__(self, app: Flask, config: Config, *, clock=time.time) -> None:
        self.app, self.config, self.clock = app, config, clock
        self.prices = Prices(app, config)
        self.path = Path(config.storage.state_dir) / STATE_FILE
        self._lock = threading.Lock()
        self.data = self._load()
        self._last: float | None = None  # a restart (or a stop) is never counted as used time
        self._cpu_seen: dict[int, float] = {}  # pid -> cpu seconds at the last sample
        self._loop = services.Periodic("usage-meter", config.usage.interval_s, self._sample_logged)

    # -- state ---------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and isinstance(data.get("days"), dict):
                return data
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.exception("usage file %s unreadable; starting a new one beside it", self.path)
            self.path.replace(self.path.with_suffix(".unreadable"))
        return {"schema": 1, "days": {}}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    # -- attribution ---------------------------------------------------------------------------------------
    def _owners(self) -> dict[int, tuple[str, str]]:
        """pid -> (project, protocol) for every process of a running protocol: its run, its Slurm jobs'
        processes on this node, and all their descendants."""
        owners: dict[int, tuple[str, str]] = {}
        active, _ = scipion_projects.active_protocols(self.config.idle.project_dirs)
        conf = slurm_jobs.conf_path(self.config.idle.slurm_conf)
        for protocol in active:
            roots = [protocol.pid] if protocol.pid else []
            for job in protocol.job_ids:
                roots += slurm_jobs.job_pids(job, conf)
            for pid in roots:
                try:
                    process = psutil.Process(pid)
                    family = [process, *process.children(recursive=True)]
                except psutil.Error:
                    continue
                for member in family:
                    owners[member.pid] = (protocol.project, protocol.name)
            if not roots:  # queued, or running elsewhere: wall time only while it is active
                owners[-protocol.id] = (protocol.project, protocol.name)
        return owners

    def _cpu_delta(self, pid: int, since: float) -> float:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                # own time only: live descendants are counted themselves (children_* would count them twice)
                total = times.user + times.system
                created = process.create_time()
        except psutil.Error:
            return 0.0
        before = self._cpu_seen.get(pid)
        self._cpu_seen[pid] = total
        if before is None:
            return total if created >= since else 0.0  # a process older than the interval: baseline only
        return max(0.0, total - before)

    def sample(self) -> None:
        """Close the interval since the last sample and attribute it."""
        now = self.clock()
        with self._lock:
            last, self._last = self._last, now
            owners = self._owners()
            protocols = sorted(set(owners.values()))
            cpu = dict.fromkeys(protocols, 0.0)
            seen = set()
            for pid, key in owners.items():
                if pid > 0:
                    seen.add(pid)
                    cpu[key] += self._cpu_delta(pid, last if last is not None else now)
            self._cpu_seen = {pid: v for pid, v in self._cpu_seen.items() if pid in seen}
            if last is None:
                return
            dt = now - last
            if dt <= 0 or dt > 5 * self.config.usage.interval_s:
                return  # the machine slept (hibernate) or the clock jumped: not a measured interval
            self._attribute(now, dt, owners, protocols, cpu)
            self._save()

    def _gpu_use(self, owners: dict[int, tuple[str, str]]) -> tuple[dict, float, float]:
        """(protocol -> GPU seconds per second, other GPU share, memory bytes per protocol)."""
        share: dict[tuple[str, str], float] = {}
        memory: dict[tuple[str, str], float] = {}
        other = 0.0
        report = gpus.sampler(self.app).report()
        for card in report.gpus if not report.stale else []:
            for pid, util in (card.get("process_sm_util_pct") or {}).items():
                key = owners.get(int(pid))
                if key is None:
                    other += util / 100
                else:
                    share[key] = share.get(key, 0.0) + util / 100
            for proc in card.get("processes") or []:
                key = owners.get(proc["pid"])
                if key is not None and proc.get("memory_used_bytes"):
                    memory[key] = memory.get(key, 0.0) + proc["memory_used_bytes"]
        return share, other, memory

    def _attribute(self, now, dt, owners, protocols, cpu) -> None:
        per_hour, _ = self.prices.instance_per_hour()
        rate = None if per_hour is None else (per_hour + self.prices.volumes_per_hour()) / 3600
        cost = None if rate is None else rate * dt
        gpu_share, gpu_other, gpu_memory = self._gpu_use(owners)
        day = self.data["days"].setdefault(_day(now), _new_day())
        day["wall_s"] += dt
        _add(day, "cost_usd", cost)
        if protocols:
            # GPU time decides where GPU work ran (work outside Scipion takes its share), else CPU time
            if sum(gpu_share.values()) > 0:
                weights = {key: gpu_share.get(key, 0.0) for key in protocols}
                other_weight = gpu_other
            elif sum(cpu.values()) > 0:
                weights, other_weight = dict(cpu), 0.0
            else:
                weights, other_weight = dict.fromkeys(protocols, 1.0), 0.0
            total = sum(weights.values()) + other_weight
            for key in protocols:
                entry = day["protocols"].setdefault(
                    f"{key[0]}\x00{key[1]}",
                    {"project": key[0], "protocol": key[1], **_new_counts()},
                )
                entry["wall_s"] += dt
                entry["cpu_s"] += cpu.get(key, 0.0)
                entry["gpu_s"] += gpu_share.get(key, 0.0) * dt
                entry["gpu_memory_max_bytes"] = max(entry["gpu_memory_max_bytes"], gpu_memory.get(key, 0.0))
                _add(entry, "cost_usd", None if cost is None else cost * weights[key] / total)
            _add(day, "attributed_cost_usd", None if cost is None else cost * (total - other_weight) / total)
            if other_weight:
                day["other_s"] += dt * other_weight / total
                _add(day, "other_cost_usd", None if cost is None else cost * other_weight / total)
        elif gpu_other > 0 or self._host_busy():
            day["other_s"] += dt
            _add(day, "other_cost_usd", cost)
        else:
            day["idle_s"] += dt
            _add(day, "idle_cost_usd", cost)
        for stale in sorted(self.data["days"])[:-KEEP_DAYS]:
            del self.data["days"][stale]

    def _host_busy(self) -> bool:
        total, _ = host.sampler(self.app).meter.current()
        return total is not None and total >= self.config.idle.cpu_pct

    def _sample_logged(self) -> None:
        try:
            self.sample()
        except Exception:
            log.exception("usage sample failed")

    # -- report --------------------------------------------------------------------------------------------
    def report(self, days: int = 31) -> dict[str, Any]:
        with self._lock:
            data = json.loads(json.dumps(self.data))
        per_hour, source = self.prices.instance_per_hour()
        volumes = self.prices.volumes_per_hour() if per_hour is not None else None
        out_days = []
        for date in sorted(data["days"])[-days:]:
            day = data["days"][date]
            projects: dict[str, dict[str, Any]] = {}
            for entry in day["protocols"].values():
                project = projects.setdefault(
                    entry["project"], {"project": entry["project"], "protocols": [], **_new_counts()}
                )
                project["protocols"].append({k: _round(v) for k, v in entry.items() if k != "project"})
                for field in ("wall_s", "cpu_s", "gpu_s"):
                    project[field] += entry[field]
                project["gpu_memory_max_bytes"] = max(
                    project["gpu_memory_max_bytes"], entry["gpu_memory_max_bytes"]
                )
                _add(project, "cost_usd", entry["cost_usd"])
            out_days.append(
                {
                    "date": date,
                    **{k: _round(v) for k, v in day.items() if k != "protocols"},
                    "projects": [
                        {k: _round(v) if k != "protocols" else v for k, v in p.items()}
                        for p in sorted(projects.values(), key=lambda p: -(p["cost_usd"] or 0))
                    ],
                }
            )
        totals = _new_day()
        del totals["protocols"]
        for day in data["days"].values():
            for key in totals:
                if key.endswith("_usd"):
                    _add(totals, key, day.get(key))
                else:
                    totals[key] += day.get(key, 0.0)
        return {
            "currency": "USD",
            "price": {
                "instance_per_hour": per_hour,
                "volumes_per_hour": None if volumes is None else round(volumes, 6),
                "source": source,
            },
            "interval_s": self.config.usage.interval_s,
            "days": out_days,
            "totals": {k: _round(v) for k, v in totals.items()},
            "saved_by_stops": self.savings(per_hour, totals["cost_usd"]),
        }

    def savings(self, per_hour: float | None, cost: float | None) -> dict[str, Any]:
        """Time the idle rule kept the instance stopped (from its stop to the next boot) at the instance's
        price; the volumes bill on while stopped, so only the instance part is saved."""
        path = Path(self.config.storage.state_dir) / idle.STOPS_FILE
        try:
            stops = json.loads(path.read_text())
        except (OSError, ValueError):
            stops = []
        boot = psutil.boot_time()
        stopped_s = 0.0
        counted = 0
        for stop in stops:
            resumed = stop.get("resumed_at")
            if resumed is None and stop["stopped_at"] < boot:
                resumed = boot  # this boot followed that stop
            if resumed is not None and resumed > stop["stopped_at"]:
                stopped_s += resumed - stop["stopped_at"]
                counted += 1
        saved = None if per_hour is None else per_hour * stopped_s / 3600
        return {
            "stops": counted,
            "stopped_s": round(stopped_s, 1),
            "saved_usd": _round(saved),
            "cost_usd": _round(cost),
            "would_have_cost_usd": None if saved is None or cost is None else _round(cost + saved),
        }

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


def _new_counts() -> dict[str, Any]:
    return {"wall_s": 0.0, "cpu_s": 0.0, "gpu_s": 0.0, "gpu_memory_max_bytes": 0.0, "cost_usd": 0.0}


def _new_day() -> dict[str, Any]:
    return {
        "wall_s": 0.0,
        "idle_s": 0.0,
        "other_s": 0.0,
        "cost_usd": 0.0,
        "attributed_cost_usd": 0.0,
        "other_cost_usd": 0.0,
        "idle_cost_usd": 0.0,
        "protocols": {},
    }


def _add(target: dict, key: str, value: float | None) -> None:
    """Money adds up to None once any part is unknown: a partial sum must not pass for the whole."""
    if value is None or target.get(key) is None:
        target[key] = None
    else:
        target[key] += value


def _round(value: Any) -> Any:
    return round(value, 9) if isinstance(value, float) else value  # sub-cent: a test price is tiny


def meter(app: Flask) -> UsageMeter:
    return services.get(app, SERVICE)


def init_app(app: Flask, config: Config) -> None:
    services.register(app, SERVICE, UsageMeter(app, config))
    collectors.register(app, "usage", collect_metrics)


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    """Counters labelled by project and protocol, totals over every kept day."""
    data = meter(app).report(days=KEEP_DAYS)
    labels = ["project", "protocol"]
    families = {
        "wall_s": CounterMetricFamily(
            "scipioncloud_usage_wall_seconds", "Wall time protocols ran", labels=labels
        ),
        "cpu_s": CounterMetricFamily(
            "scipioncloud_usage_cpu_seconds", "CPU time of protocols", labels=labels
        ),
        "gpu_s": CounterMetricFamily(
            "scipioncloud_usage_gpu_seconds", "GPU time (SM busy) of protocols", labels=labels
        ),
        "cost_usd": CounterMetricFamily(
            "scipioncloud_usage_protocol_cost_dollars", "Cost given to each protocol", labels=labels
        ),
    }
    sums: dict[tuple[str, str], dict[str, float]] = {}
    for day in data["days"]:
        for project in day["projects"]:
            for protocol in project["protocols"]:
                key = (project["project"], protocol["protocol"])
                entry = sums.setdefault(key, dict.fromkeys(families, 0.0))
                for field in families:
                    entry[field] += protocol.get(field) or 0.0
    for key, entry in sums.items():
        for field, family in families.items():
            family.add_metric(list(key), entry[field])
    totals = data["totals"]
    for field, name, text in (
        ("idle_s", "usage_idle_seconds", "Wall time nobody used"),
        ("idle_cost_usd", "usage_idle_cost_dollars", "Cost of the time nobody used"),
        ("other_cost_usd", "usage_other_cost_dollars", "Cost of work outside Scipion protocols"),
        ("cost_usd", "usage_cost_dollars", "Wall-clock cost of the instance and its volumes"),
    ):
        family = CounterMetricFamily("scipioncloud_" + name, text)
        family.add_metric([], totals.get(field) or 0.0)
        families[field + "_total"] = family
    saved = GaugeMetricFamily(
        "scipioncloud_usage_saved_by_stops_dollars", "Instance cost avoided by idle stops"
    )
    saved.add_metric([], data["saved_by_stops"]["saved_usd"] or 0.0)
    return iter([*families.values(), saved]), True


@bp.get("/v1/usage")
def get_usage():
    raw = request.args.get("days", "31")
    if not raw.isdigit() or not 1 <= int(raw) <= KEEP_DAYS:
        raise ApiError(400, f"days must be a whole number from 1 to {KEEP_DAYS}, got {raw!r}")
    return jsonify(meter(current_app).report(days=int(raw)))
