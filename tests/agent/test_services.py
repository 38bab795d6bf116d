"""services.Periodic: the one loop every sampler shares keeps ticking when a tick raises."""

from __future__ import annotations

import logging
import threading

from agent import services


def test_a_failing_tick_is_logged_and_the_loop_goes_on(caplog):
    calls = []
    third = threading.Event()

    def tick():
        calls.append(len(calls))
        if len(calls) == 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("odd library")

    loop = services.Periodic("test-loop", 0.01, tick, immediately=True)
    with caplog.at_level(logging.ERROR, logger="agent.services"):
        loop.start()
        try:
            assert third.wait(5), calls
            assert loop.running
        finally:
            loop.stop()
    assert any("test-loop: tick failed" in r.getMessage() and r.exc_info for r in caplog.records)
    assert not loop.running
