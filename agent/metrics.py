"""GET /metrics: Prometheus text format from the agent's own CollectorRegistry (never the global one).

One custom Collector runs the collectors each capability registered (agent/collectors.py, as
node_exporter's registerCollector) over the samplers' last figures, so a scrape never waits for NVML.
Names carry their units as dcgm-exporter and nvidia_gpu_exporter name theirs; each collector reports its
success and duration as node_exporter's do (`scipioncloud_scrape_collector_success{collector=...}`).
Figures a GPU does not support are left out, never written as sentinel numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from agent import collectors
from agent.config import Config
from agent.openapi import operation

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)
REGISTRY_KEY = "scipioncloud.metrics.registry"
# Text format 0.0.4: what every Prometheus (Debian's 2.x included) negotiates; generate_latest writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


class AgentCollector(Collector):
    """Runs each part; a part that raises is reported as failed and the others still come out."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        success = collectors.gauge(
            "scrape_collector_success", "1 when the collector succeeded", ["collector"]
        )
        duration = collectors.gauge(
            "scrape_collector_duration_seconds", "How long the collector took", ["collector"]
        )
        for name, collector in list(collectors.registered(self.app).items()):
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
