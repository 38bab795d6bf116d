"""GET /v1/idle and the idle action: the machine is idle when every signal has said "idle" for
`idle.window_min` minutes; with `idle.action = "poweroff"` the poweroff command runs after a further
`idle.grace_min` minutes, once.

Signals are small functions returning a `Signal`. The GPU and CPU signals are built in; another capability
adds its own with `register_signal(app, name, fn)` (the desktop adds "connected VNC clients"). A signal that
cannot tell, or raises, counts as busy: a machine is never powered off on a guess.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from prometheus_client.core import Metric

from agent import collectors, gpus, host, nvml, services
from agent.config import Config, IdleConfig
from agent.openapi import operation

log = logging.getLogger(__name__)
bp = Blueprint("idle", __name__)
SERVICE = "idle"
SIGNALS = "scipioncloud.idle.signals"

OPENAPI = {
    "/v1/idle": {
        "get": operation(
            "Idle or not, since when, each signal's verdict with its reason, and the pending idle action",
            _200="the idle state",
            _401="no token",
        )
    }
}


@dataclass(frozen=True)
class Signal:
    """One signal's verdict."""

    busy: bool
    reason: str


SignalFn = Callable[[], Signal]


def register_signal(app: Flask, name: str, fn: SignalFn) -> None:
    """Add a signal to the idle rule; works whichever capability's init_app runs first."""
    app.extensions.setdefault(SIGNALS, {})[name] = fn


def gpu_signal(app: Flask, threshold_pct: float) -> SignalFn:
    def evaluate() -> Signal:
        report = gpus.sampler(app).report()
        state = report.sweep.state
        if report.stale:
            return Signal(True, f"GPU sample is stale ({report.stale_reason}); counted as busy")
        if state in (nvml.NO_DRIVER, nvml.LIBRARY_NOT_FOUND):
            return Signal(False, f"no NVIDIA GPU to watch (NVML: {state})")
        if state != nvml.OK:
            return Signal(True, f"GPU state unknown (NVML: {state}); counted as busy")
        busy = []
        for gpu in report.gpus:
            util = gpu["utilization_gpu_pct"]
            if util is None or util >= threshold_pct:
                busy.append(f"GPU {gpu['index']} at {'unknown' if util is None else util}%")
        if busy:
            return Signal(True, ", ".join(busy) + f" (threshold {threshold_pct:g}%)")
        return Signal(False, f"{len(report.gpus)} GPU(s) under {threshold_pct:g}%")

    return evaluate


def cpu_signal(app: Flask, threshold_pct: float) -> SignalFn:
    def evaluate() -> Signal:
        total, _ = host.sampler(app).meter.current()
        if total is None:
            return Signal(True, "no CPU figure yet; counted as busy")
        if total >= threshold_pct:
            return Signal(True, f"CPU at {total:g}% (threshold {threshold_pct:g}%)")
        return Signal(False, f"CPU at {total:g}%, under {threshold_pct:g}%")

    return evaluate


class IdleMonitor:
    """Evaluates the signals every `check_interval_s` and runs the idle action when it is due."""

    def __init__(
        self,
        app: Flask,
        config: IdleConfig,
        *,
        clock: Callable[[], float] = time.time,
        runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock
        self.runner = runner
        self.window_s = config.window_min * 60
        self.grace_s = config.grace_min * 60
        self._lock = threading.Lock()
        now = clock()
        self.quiet_since: float | None = None  # every signal idle since then
        self.state_since = now  # the current answer (idle or not) holds since then
        self.was_idle = False
        self.action_ran_at: float | None = None
        self.action_result: str | None = None
        self.last: dict[str, Any] | None = None
        self.last_at: float | None = None  # clock() of the evaluation behind `last`
        self._loop = services.Periodic("idle-monitor", config.check_interval_s, self._check_logged)

    def _evaluate(self) -> list[tuple[str, Signal]]:
        results = []
        for name, fn in list(self.app.extensions.get(SIGNALS, {}).items()):
            try:
                signal = fn()
                if not isinstance(signal, Signal):
                    signal = Signal(bool(signal[0]), str(signal[1]))
            except Exception as exc:  # a broken signal must not make the machine look idle
                log.exception("idle signal %s failed", name)
                signal = Signal(True, f"signal failed ({type(exc).__name__}: {exc}); counted as busy")
            results.append((name, signal))
        return results

    def check(self, *, act: bool = True) -> dict[str, Any]:
        """Look at the signals now; with act, run the idle action when it is due. Returns the state."""
        with self._lock:
            now = self.clock()
            signals = self._evaluate()
            quiet = bool(signals) and not any(s.busy for _, s in signals)
            if not quiet:
                self.quiet_since = None
                self.action_ran_at = None  # activity came back: the action may run again later
            elif self.quiet_since is None:
                self.quiet_since = now
            idle = self.quiet_since is not None and now - self.quiet_since >= self.window_s
            if idle != self.was_idle:
                self.state_since = self.quiet_since + self.window_s if idle else now
                self.was_idle = idle
                log.info("machine is now %s", "idle" if idle else "busy")
            due_at = None
            if self.config.action == "poweroff" and self.quiet_since is not None:
                due_at = self.quiet_since + self.window_s + self.grace_s
                if act and now >= due_at and self.action_ran_at is None:
                    self._run_action(now)
            self.last_at = now
            self.last = {
                "idle": idle,
                "since": gpus.iso(self.state_since),
                "quiet_since": gpus.iso(self.quiet_since),
                "quiet_for_s": round(now - self.quiet_since, 1) if self.quiet_since is not None else 0.0,
                "window_s": self.window_s,
                "reasons": [f"{name}: {s.reason}" for name, s in signals],
                "signals": [{"name": name, "busy": s.busy, "reason": s.reason} for name, s in signals],
                "action": {
                    "kind": self.config.action,
                    "grace_s": self.grace_s,
                    "due_at": gpus.iso(due_at),
                    "ran_at": gpus.iso(self.action_ran_at),
                    "result": self.action_result,
                },
            }
            return self.last

    def current(self) -> dict[str, Any]:
        """The background loop's last evaluation while it runs and is fresh; otherwise a new look. Requests
        then never wait on the signals' probes (the desktop's connection scan reads every process's fds)."""
        with self._lock:
            last, at = self.last, self.last_at
        fresh_s = 2 * self._loop.interval_s + 1
        if self._loop.running and last is not None and at is not None and self.clock() - at <= fresh_s:
            return last
        return self.check(act=False)

    def _run_action(self, now: float) -> None:
        command = shlex.split(self.config.poweroff_command)
        log.warning("idle for %.0f s (window + grace): running %s", now - self.quiet_since, command)
        self.action_ran_at = now  # once per idle stretch, even when the command fails
        try:
            done = self.runner(command, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.action_result = f"could not run {command[0]}: {exc}"
        else:
            self.action_result = f"exit {done.returncode}" + (
                f": {done.stderr.strip()[:200]}" if done.returncode else ""
            )
        log.warning("idle action %s: %s", command[0], self.action_result)

    def _check_logged(self) -> None:
        try:
            self.check()
        except Exception:  # keep watching; the next check may succeed
            log.exception("idle check failed")

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


def monitor(app: Flask) -> IdleMonitor:
    return services.get(app, SERVICE)


def init_app(app: Flask, config: Config) -> None:
    register_signal(app, "gpu", gpu_signal(app, config.idle.gpu_util_pct))
    register_signal(app, "cpu", cpu_signal(app, config.idle.cpu_pct))
    services.register(app, SERVICE, IdleMonitor(app, config.idle))
    collectors.register(app, "idle", collect_metrics)


@bp.get("/v1/idle")
def get_idle():
    return jsonify(monitor(current_app).current())


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    state = monitor(app).current()
    idle_gauge = collectors.gauge("idle", "1 when every idle signal has been idle for the whole window")
    idle_gauge.add_metric([], 1.0 if state["idle"] else 0.0)
    quiet = collectors.gauge("idle_quiet_seconds", "How long every idle signal has said idle")
    quiet.add_metric([], state["quiet_for_s"])
    busy = collectors.gauge("idle_signal_busy", "1 when this idle signal says busy", ["signal"])
    for signal in state["signals"]:
        busy.add_metric([signal["name"]], 1.0 if signal["busy"] else 0.0)
    return iter([idle_gauge, quiet, busy]), True
