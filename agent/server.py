"""Serve the agent with waitress: one process (samplers and jobs share memory), a pool of threads."""

from __future__ import annotations

import logging
import resource
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
    _allow_descriptors(config.server.connection_limit + 256)
    waitress.serve(
        app,
        listen=config.server.bind,
        threads=config.server.threads,
        ident="scipioncloud-agent",
        clear_untrusted_proxy_headers=True,
        # Slow or idle clients hold a connection, not a thread (waitress reads a request whole before a
        # worker sees it): allow many, close the idle ones soon, and poll() rather than select(), which
        # cannot watch descriptors above 1023.
        connection_limit=config.server.connection_limit,
        channel_timeout=config.server.channel_timeout_s,
        cleanup_interval=min(10, config.server.channel_timeout_s),
        asyncore_use_poll=True,
        # waitress answers these itself, before the app, in text/plain (docs/agent-api.md): a request
        # line it cannot parse (400), headers over 64 KiB (431), a body over max_body_bytes (413).
        max_request_header_size=64 * 1024,
        max_request_body_size=config.server.max_body_bytes,
        _quiet=True,
    )


def _allow_descriptors(wanted: int) -> None:
    """Raise the soft open-files limit to what connection_limit needs (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
