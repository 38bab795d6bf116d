"""The agent's Flask application: one module per capability, wired in the order below."""

from __future__ import annotations

import importlib
from pathlib import Path

from flask import Flask

from agent import errors, security
from agent.config import Config
from agent.token import ensure_token

# Each module holds `bp` (a Blueprint), `OPENAPI` (its paths) and may hold `init_app(app, config)`,
# which attaches its state and background services.
CAPABILITIES = (
    "agent.health",
    "agent.gpus",
    "agent.host",
    "agent.idle",
    "agent.volumes",
    "agent.desktop",
    "agent.usage",
    "agent.data",
    "agent.metrics",
)


def create_app(config: Config | None = None, *, token: str | None = None) -> Flask:
    config = config or Config()
    if token is None:
        token = ensure_token(Path(config.server.token_file))
    app = Flask("agent")
    app.config.update(
        MAX_CONTENT_LENGTH=config.server.max_body_bytes,
        JSON_SORT_KEYS=False,
        SCIPIONCLOUD=config,
        OPENAPI_FRAGMENTS=[],
    )
    app.json.sort_keys = False
    errors.init_app(app)
    security.init_app(app, token, config.bind_host)
    for name in CAPABILITIES:
        module = importlib.import_module(name)
        if hasattr(module, "init_app"):
            module.init_app(app, config)
        app.register_blueprint(module.bp)
        app.config["OPENAPI_FRAGMENTS"].append(module.OPENAPI)
    return app
