"""What counts as work: one signal per kind, each a small function returning idle.Signal (docs/idle.md).

Every signal answers "busy" when it cannot tell (a hung X server, an unreadable project, a Slurm that does
not answer): the machine is never powered off on a guess.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from flask import Flask

from agent import gpus, host, inflight, nvml, scipion_projects, sessions, slurm_jobs
from agent.config import Config
from agent.idle import Signal, SignalFn


def gpu(app: Flask, threshold_pct: float) -> SignalFn:
    """Busy: a GPU at or over the threshold, or any process holding a compute context on a GPU."""

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
        for card in report.gpus:
            util = card["utilization_gpu_pct"]
            if util is None or util >= threshold_pct:
                busy.append(f"GPU {card['index']} at {'unknown' if util is None else util}%")
            compute = [p for p in card["processes"] or [] if p.get("compute")]
            if compute:
                names = ", ".join(f"{p['pid']} ({p.get('name') or '?'})" for p in compute)
                busy.append(f"GPU {card['index']} runs compute process(es) {names}")
        if busy:
            return Signal(True, "; ".join(busy) + f" (threshold {threshold_pct:g}%)")
        return Signal(False, f"{len(report.gpus)} GPU(s) under {threshold_pct:g}%, no compute process")

    return evaluate


def cpu(app: Flask, threshold_pct: float) -> SignalFn:
    def evaluate() -> Signal:
        total, _ = host.sampler(app).meter.current()
        if total is None:
            return Signal(True, "no CPU figure yet; counted as busy")
        if total >= threshold_pct:
            return Signal(True, f"CPU at {total:g}% (threshold {threshold_pct:g}%)")
        return Signal(False, f"CPU at {total:g}%, under {threshold_pct:g}%")

    return evaluate


def scipion(roots: tuple[str, ...]) -> SignalFn:
    """Busy: a protocol launched, running, interactive or scheduled in any project under the roots."""

    def evaluate() -> Signal:
        active, errors = scipion_projects.active_protocols(roots)
        if errors:
            return Signal(True, f"cannot read project(s): {'; '.join(errors)}; counted as busy")
        if active:
            shown = ", ".join(f"{p.project}/{p.name} ({p.status})" for p in active[:5])
            more = f" and {len(active) - 5} more" if len(active) > 5 else ""
            return Signal(True, f"Scipion protocol(s) {shown}{more}")
        return Signal(False, f"no Scipion protocol running or queued under {', '.join(roots)}")

    return evaluate


def slurm(node: str, conf: Path) -> SignalFn:
    def evaluate() -> Signal:
        if not slurm_jobs.installed(conf):
            return Signal(False, f"no Slurm on this machine (no squeue or no {conf})")
        try:
            jobs = slurm_jobs.jobs_on_node(node, conf)
        except slurm_jobs.SlurmError as exc:
            return Signal(True, f"Slurm did not answer ({exc}); counted as busy")
        if jobs:
            shown = ", ".join(f"{j.id} {j.name} ({j.state.lower()}, {j.user})" for j in jobs[:5])
            return Signal(True, f"Slurm job(s) on {node}: {shown}")
        return Signal(False, f"no Slurm job on {node}")

    return evaluate


def agent_jobs(app: Flask) -> SignalFn:
    def evaluate() -> Signal:
        jobs = inflight.registry(app).active()
        if jobs:
            return Signal(True, "agent job(s) in flight: " + ", ".join(f"{j.kind} {j.what}" for j in jobs))
        return Signal(False, "no transfer, pre-warm or archive job in flight")

    return evaluate


def ssh(utmp: Path, input_idle_s: float) -> SignalFn:
    """Busy: an SSH login whose terminal had input within input_idle_s (idle time as `w` shows it)."""

    def evaluate() -> Signal:
        logins = sessions.ssh_logins(utmp)
        recent = [s for s in logins if s.idle_s is None or s.idle_s < input_idle_s]
        if recent:
            shown = ", ".join(
                f"{s.user}@{s.tty} from {s.host} ({'?' if s.idle_s is None else f'{s.idle_s:.0f} s'} idle)"
                for s in recent
            )
            return Signal(True, f"SSH session(s) with recent input: {shown}")
        if logins:
            return Signal(False, f"{len(logins)} SSH session(s), none with input in {input_idle_s:g} s")
        return Signal(False, "no SSH session")

    return evaluate


def desktop_input(display: str, xauthority: Path | None, input_idle_s: float) -> SignalFn:
    """Busy: keyboard or mouse input on the desktop's X display within input_idle_s. No X server on the
    display (the desktop is off) is idle; an X server that cannot say is busy."""

    def evaluate() -> Signal:
        socket = Path("/tmp/.X11-unix") / f"X{display.lstrip(':').split('.')[0]}"  # noqa: S108 - X's own path
        if not socket.exists():
            return Signal(False, f"no X server on {display}")
        try:
            idle_s = sessions.x_idle_s(display, xauthority)
        except RuntimeError as exc:
            return Signal(True, f"desktop idle time unknown ({exc}); counted as busy")
        if idle_s < input_idle_s:
            return Signal(True, f"desktop {display} had input {idle_s:.0f} s ago")
        return Signal(False, f"desktop {display}: no input for {idle_s:.0f} s")

    return evaluate


def user_path(path: Path, user: str) -> Path:
    """'~/x' -> the desktop user's home/x (the agent runs as root)."""
    if str(path).startswith("~"):
        try:
            home = Path(pwd.getpwnam(user).pw_dir)
        except KeyError:
            return path.expanduser()
        return home / str(path)[2:]
    return path


def register_all(app: Flask, config: Config) -> None:
    """The built-in signals, each unless turned off in [idle]."""
    from agent.idle import register_signal

    c = config.idle
    input_idle_s = c.input_idle_min * 60
    if c.watch_gpu:
        register_signal(app, "gpu", gpu(app, c.gpu_util_pct))
    if c.watch_cpu:
        register_signal(app, "cpu", cpu(app, c.cpu_pct))
    if c.watch_scipion:
        register_signal(app, "scipion", scipion(c.project_dirs))
    if c.watch_slurm:
        register_signal(
            app, "slurm", slurm(slurm_jobs.node_name(c.slurm_node), slurm_jobs.conf_path(c.slurm_conf))
        )
    if c.watch_inflight:
        register_signal(app, "agent_jobs", agent_jobs(app))
    if c.watch_ssh:
        register_signal(app, "ssh", ssh(c.utmp_file, input_idle_s))
    if c.watch_desktop_input:
        xauthority = user_path(c.xauthority, config.desktop.user)
        register_signal(
            app, "desktop_input", desktop_input(f":{config.desktop.display}", xauthority, input_idle_s)
        )
