"""Each capability registers its own /metrics collector here, as node_exporter's collectors call
registerCollector: `register(app, "gpu", collect)` in the capability's init_app. A collector takes the app
and returns (metrics, ok); agent/metrics.py runs every registered one per scrape and reports each one's
success and duration. No Flask route and no import of any capability: no import cycles."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric

KEY = "scipioncloud.metrics.collectors"
PREFIX = "scipioncloud_"

Collect = Callable[[Flask], tuple[Iterator[Metric], bool]]


def gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


def register(app: Flask, name: str, collect: Collect) -> None:
    collectors = app.extensions.setdefault(KEY, {})
    if name in collectors:
        raise ValueError(f"a metrics collector named {name!r} is already registered")
    collectors[name] = collect


def registered(app: Flask) -> dict[str, Collect]:
    """The collectors in registration order (the order of agent.app.CAPABILITIES)."""
    return app.extensions.get(KEY, {})
