"""GET /v1/idle and the idle action. The machine is idle when every signal has said "idle" for
`idle.window_min` minutes (docs/idle.md says what each signal counts as work). Then, with an action set:

    stay  -> warn (desktop notification and status-page banner, `idle.grace_min` minutes, "keep running"
             postpones by `idle.postpone_min`) -> stop (poweroff or hibernate, once per idle stretch)

Each decision is logged once, when it changes, with the signals that made it; /v1/idle shows the last one.

Signals are small functions returning a `Signal`. The built-in ones live in agent/idle_signals.py; another
capability adds its own with `register_signal(app, name, fn)`. A signal that cannot tell, or raises, counts
as busy: a machine is never powered off on a guess.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from prometheus_client.core import Metric

from agent import collectors, gpus, services
from agent.config import Config, IdleConfig
from agent.errors import ApiError, json_body
from agent.openapi import REQUIRED, operation

log = logging.getLogger(__name__)
bp = Blueprint("idle", __name__)
SERVICE = "idle"
SIGNALS = "scipioncloud.idle.signals"
STOPS_FILE = "idle-stops.json"  # when the idle action ran: the usage report's "saved by stops"
MAX_POSTPONE_MIN = 24 * 60
STAY, WARN, STOP = "stay", "warn", "stop"

STATE = REQUIRED(["idle", "reasons", "signals", "decision"], idle="boolean", reasons="array", signals="array")

OPENAPI = {
    "/v1/idle": {
        "get": operation(
            "Idle or not, since when, each signal's verdict, the last decision (stay, warn, stop) and why",
            _200="the idle state",
            schema=STATE,
            _401="no token",
        )
    },
    "/v1/idle/postpone": {
        "post": operation(
            "Keep running: postpone the idle action by `minutes` (default idle.postpone_min)",
            body={
                "type": "object",
                "additionalProperties": False,
                "properties": {"minutes": {"type": "number", "minimum": 1, "maximum": MAX_POSTPONE_MIN}},
            },
            schema=STATE,
            _200="the idle state after postponing",
            _400="bad minutes",
            _401="no token",
        )
    },
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


def power_action(config: IdleConfig, power_state_file: Path | None = None) -> tuple[str, str]:
    """(command, why) for the configured action: hibernate only where the kernel offers suspend to disk
    (EC2 instances launched with hibernation enabled), otherwise poweroff, which with the instance's shutdown
    behaviour "stop" stops it (EBS kept, compute billing ends)."""
    if config.action == "hibernate":
        path = power_state_file or config.power_state_file
        try:
            offers = "disk" in path.read_text().split()
        except OSError:
            offers = False
        if offers:
            return config.hibernate_command, "hibernate (the kernel offers suspend to disk)"
        return config.poweroff_command, f"poweroff: hibernation not supported here ({path} offers no disk)"
    return config.poweroff_command, "poweroff (shutdown behaviour stop)"


class IdleMonitor:
    """Evaluates the signals every `check_interval_s`, decides stay/warn/stop, and acts when due."""

    def __init__(
        self,
        app: Flask,
        config: IdleConfig,
        *,
        clock: Callable[[], float] = time.time,
        runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
        notifier: Any = None,
        state_dir: Path | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock
        self.runner = runner
        self.notifier = notifier
        self.state_dir = state_dir
        self.window_s = config.window_min * 60
        self.grace_s = config.grace_min * 60
        self._lock = threading.RLock()
        now = clock()
        self.quiet_since: float | None = None  # every signal idle since then
        self.state_since = now  # the current answer (idle or not) holds since then
        self.was_idle = False
        self.postponed_until: float | None = None
        self.decision = STAY
        self.decision_since = now
        self.decision_reasons: list[str] = []
        self.decisions: list[dict[str, Any]] = []  # the last changes, newest last
        self.warned_at: float | None = None
        self.action_ran_at: float | None = None
        self.action_result: str | None = None
        self.last: dict[str, Any] | None = None
        self.last_at: float | None = None  # clock() of the evaluation behind `last`
        # Periodic guards the tick: a check that raises is logged and the next one runs on schedule.
        self._loop = services.Periodic("idle-monitor", config.check_interval_s, self.check)

    @property
    def acts(self) -> bool:
        return self.config.action != "none"

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

    def _times(self) -> tuple[float | None, float | None]:
        """(warn_at, due_at) for the current quiet stretch; None without one or without an action."""
        if not self.acts or self.quiet_since is None:
            return None, None
        warn_at = self.quiet_since + self.window_s
        if self.postponed_until is not None:
            warn_at = max(warn_at, self.postponed_until)
        return warn_at, warn_at + self.grace_s

    def _decide(self, now: float, signals: list[tuple[str, Signal]]) -> tuple[str, list[str]]:
        busy = [f"{name}: {s.reason}" for name, s in signals if s.busy]
        if not signals:
            return STAY, ["no signal to watch: never idle"]
        if busy:
            return STAY, busy
        quiet = [f"{name}: {s.reason}" for name, s in signals]
        warn_at, due_at = self._times()
        if warn_at is None or due_at is None:
            if not self.acts:
                return STAY, ["idle action is none", *quiet]
            return STAY, quiet
        if self.quiet_since is not None and now - self.quiet_since < self.window_s:
            left = self.window_s - (now - self.quiet_since)
            return STAY, [
                f"quiet for {now - self.quiet_since:.0f} s, {left:.0f} s of the window left",
                *quiet,
            ]
        if now < warn_at:
            return STAY, [f"postponed until {gpus.iso(self.postponed_until)} (keep running)", *quiet]
        if now < due_at:
            return WARN, [
                f"{self.config.action} in {due_at - now:.0f} s unless someone keeps it running",
                *quiet,
            ]
        return STOP, quiet

    def _record(self, now: float, decision: str, reasons: list[str]) -> None:
        """Log a decision once, when it changes, with the signals behind it."""
        if decision == self.decision and self.decisions:
            self.decision_reasons = reasons
            return
        self.decision, self.decision_since, self.decision_reasons = decision, now, reasons
        self.decisions = [
            *self.decisions[-19:],
            {"decision": decision, "at": gpus.iso(now), "reasons": reasons},
        ]
        level = logging.INFO if decision == STAY else logging.WARNING
        log.log(level, "idle decision: %s (%s)", decision, "; ".join(reasons))

    def check(self, *, act: bool = True) -> dict[str, Any]:
        """Look at the signals now; with act, warn and run the idle action when due. Returns the state."""
        with self._lock:
            now = self.clock()
            signals = self._evaluate()
            quiet = bool(signals) and not any(s.busy for _, s in signals)
            if not quiet:
                self.quiet_since = None
                self.action_ran_at = None  # activity came back: the action may run again later
                self.warned_at = None  # a postponement holds on: "keep running" means until then, busy or not
            elif self.quiet_since is None:
                self.quiet_since = now
            idle = self.quiet_since is not None and now - self.quiet_since >= self.window_s
            if idle != self.was_idle:
                self.state_since = self.quiet_since + self.window_s if idle else now
                self.was_idle = idle
                log.info("machine is now %s", "idle" if idle else "busy")
            decision, reasons = self._decide(now, signals)
            warn_at, due_at = self._times()
            if act:
                self._record(now, decision, reasons)
                if decision == WARN and self.warned_at is None and due_at is not None:
                    self._warn(now, due_at)
                if decision == STOP and self.action_ran_at is None:
                    self._run_action(now)
            self.last_at = now
            self.last = self._state(now, idle, signals, decision, reasons, warn_at, due_at)
            return self.last

    def _state(self, now, idle, signals, decision, reasons, warn_at, due_at) -> dict[str, Any]:
        return {
            "idle": idle,
            "since": gpus.iso(self.state_since),
            "quiet_since": gpus.iso(self.quiet_since),
            "quiet_for_s": round(now - self.quiet_since, 1) if self.quiet_since is not None else 0.0,
            "window_s": self.window_s,
            "reasons": [f"{name}: {s.reason}" for name, s in signals],
            "signals": [{"name": name, "busy": s.busy, "reason": s.reason} for name, s in signals],
            "decision": {
                "decision": decision,
                "since": gpus.iso(self.decision_since) if decision == self.decision else gpus.iso(now),
                "reasons": reasons,
                "history": list(self.decisions),
            },
            "warning": {
                "active": decision == WARN,
                "seconds_left": round(due_at - now, 1) if decision == WARN and due_at else None,
                "warned_at": gpus.iso(self.warned_at),
                "desktop": getattr(self.notifier, "last_result", None),
            },
            "postponed_until": gpus.iso(self.postponed_until),
            "action": {
                "kind": self.config.action,
                "grace_s": self.grace_s,
                "warn_at": gpus.iso(warn_at),
                "due_at": gpus.iso(due_at),
                "ran_at": gpus.iso(self.action_ran_at),
                "result": self.action_result,
            },
        }

    def postpone(self, minutes: float | None = None, *, who: str = "api") -> dict[str, Any]:
        """Keep running: no action before now + minutes; a warning on screen is withdrawn."""
        minutes = self.config.postpone_min if minutes is None else minutes
        with self._lock:
            now = self.clock()
            self.postponed_until = now + minutes * 60
            self.warned_at = None
            log.warning(
                "idle action postponed by %s until %s (%g min)", who, gpus.iso(self.postponed_until), minutes
            )
        return self.check(act=True)

    def current(self) -> dict[str, Any]:
        """The background loop's last evaluation while it runs and is fresh; otherwise a new look. Requests
        then never wait on the signals' probes (the desktop's connection scan reads every process's fds)."""
        with self._lock:
            last, at = self.last, self.last_at
        fresh_s = 2 * self._loop.interval_s + 1
        if self._loop.running and last is not None and at is not None and self.clock() - at <= fresh_s:
            return last
        return self.check(act=False)

    def _warn(self, now: float, due_at: float) -> None:
        self.warned_at = now
        if self.notifier is None:
            return
        minutes = max(1, round((due_at - now) / 60))
        self.notifier.warn(
            "This instance will stop soon",
            f"Nothing has used it for {self.config.window_min:g} min: {self.config.action} in about "
            f"{minutes} min. Click Keep running to postpone by {self.config.postpone_min:g} min.",
            due_at - now,
            lambda: self.postpone(who="the desktop notification"),
        )

    def _run_action(self, now: float) -> None:
        command_line, why = power_action(self.config)
        command = shlex.split(command_line)
        log.warning("idle for %.0f s: running %s: %s", now - (self.quiet_since or now), command, why)
        self.action_ran_at = now  # once per idle stretch, even when the command fails
        self._remember_stop(now)
        try:
            done = self.runner(command, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.action_result = f"could not run {command[0]}: {exc}"
        else:
            self.action_result = f"exit {done.returncode}" + (
                f": {done.stderr.strip()[:200]}" if done.returncode else ""
            )
        log.warning("idle action %s: %s", command[0], self.action_result)

    def _remember_stop(self, now: float) -> None:
        """Written before the machine goes down: the next start counts the stopped time as saved."""
        if self.state_dir is None:
            return
        path = self.state_dir / STOPS_FILE
        try:
            stops = json.loads(path.read_text()) if path.exists() else []
            stops.append({"stopped_at": now, "action": self.config.action})
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stops[-1000:]))
            os.replace(tmp, path)
        except (OSError, ValueError):
            log.exception("could not record the stop in %s", path)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


def monitor(app: Flask) -> IdleMonitor:
    return services.get(app, SERVICE)


def init_app(app: Flask, config: Config) -> None:
    from agent import idle_notify, idle_signals

    idle_signals.register_all(app, config)
    notifier = idle_notify.Notifier(
        config.idle.notify_command, config.desktop.user, config.desktop.display, config.idle.session_bus
    )
    monitor = IdleMonitor(app, config.idle, notifier=notifier, state_dir=config.storage.state_dir)
    services.register(app, SERVICE, monitor)
    collectors.register(app, "idle", collect_metrics)


@bp.get("/v1/idle")
def get_idle():
    return jsonify(monitor(current_app).current())


@bp.post("/v1/idle/postpone")
def post_postpone():
    body = json_body()
    unknown = set(body) - {"minutes"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))[:300]}")
    minutes = body.get("minutes")
    if "minutes" in body and (
        isinstance(minutes, bool)
        or not isinstance(minutes, (int, float))
        or not 1 <= minutes <= MAX_POSTPONE_MIN
    ):
        raise ApiError(400, f"minutes must be a number from 1 to {MAX_POSTPONE_MIN}, got {minutes!r}")
    return jsonify(monitor(current_app).postpone(minutes, who="POST /v1/idle/postpone"))


def collect_metrics(app: Flask) -> tuple[Iterator[Metric], bool]:
    state = monitor(app).current()
    idle_gauge = collectors.gauge("idle", "1 when every idle signal has been idle for the whole window")
    idle_gauge.add_metric([], 1.0 if state["idle"] else 0.0)
    quiet = collectors.gauge("idle_quiet_seconds", "How long every idle signal has said idle")
    quiet.add_metric([], state["quiet_for_s"])
    busy = collectors.gauge("idle_signal_busy", "1 when this idle signal says busy", ["signal"])
    for signal in state["signals"]:
        busy.add_metric([signal["name"]], 1.0 if signal["busy"] else 0.0)
    decision = collectors.gauge("idle_decision", "1 for the idle rule's current decision", ["decision"])
    for name in (STAY, WARN, STOP):
        decision.add_metric([name], 1.0 if state["decision"]["decision"] == name else 0.0)
    return iter([idle_gauge, quiet, busy, decision]), True
