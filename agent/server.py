"""Serve the agent with waitress: one process (samplers and jobs share memory), a pool of threads."""

from __future__ import annotations

import logging
import signal
import sys

import waitress

from agent import services
from agent.app import create_app
from agent.config import Config

log = logging.getLogger("agent")


def serve(config: Config) -> None:
    app = create_app(config)
    services.start_all(app)

    def _stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        services.stop_all(app)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("listening on http://%s (token in %s)", config.server.bind, config.server.token_file)
    waitress.serve(
        app,
        listen=config.server.bind,
        threads=config.server.threads,
        ident="scipioncloud-agent",
        clear_untrusted_proxy_headers=True,
        _quiet=True,
    )
