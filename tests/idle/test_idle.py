"""The idle rule and its poweroff action; the action is a harmless `touch` in a temporary folder."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time

import pytest

from agent import gpus, host, idle, services
from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict
from tests.support.fake_pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_UNKNOWN, FakeGpu, FakePynvml

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Switch:
    """A signal a test turns busy or idle."""

    def __init__(self, busy: bool = False) -> None:
        self.busy = busy

    def __call__(self) -> idle.Signal:
        return idle.Signal(self.busy, "switched busy" if self.busy else "switched idle")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """An app whose idle rule sees only test signals, on a fake clock: (app, monitor, clock, marker)."""
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))

    def make(action="poweroff", window_min=30, grace_min=10):
        marker = tmp_path / "powered-off"
        config = agent_config_dict(
            tmp_path,
            idle={
                "action": action,
                "window_min": window_min,
                "grace_min": grace_min,
                "poweroff_command": f"touch {marker}",
            },
        )
        app = create_app(from_dict(config), token=TOKEN)
        app.extensions[idle.SIGNALS].clear()
        clock = Clock()
        monitor = idle.IdleMonitor(app, from_dict(config).idle, clock=clock)
        services.register(app, idle.SERVICE, monitor)
        return app, monitor, clock, marker

    return make


def test_idle_only_after_the_whole_window(setup):
    app, monitor, clock, _ = setup(action="none")
    a, b = Switch(), Switch()
    idle.register_signal(app, "a", a)
    idle.register_signal(app, "b", b)
    state = monitor.check()
    assert state["idle"] is False and state["quiet_since"] == gpus.iso(clock.now)
    started = clock.now
    clock.now += 29 * 60
    assert monitor.check()["idle"] is False
    clock.now += 60
    state = monitor.check()
    assert state["idle"] is True
    assert state["since"] == gpus.iso(started + 30 * 60)
    assert state["quiet_for_s"] == 30 * 60
    assert state["reasons"] == ["a: switched idle", "b: switched idle"]


def test_one_busy_signal_resets_the_window(setup):
    app, monitor, clock, _ = setup(action="none")
    a, b = Switch(), Switch()
    idle.register_signal(app, "a", a)
    idle.register_signal(app, "b", b)
    monitor.check()
    clock.now += 31 * 60
    assert monitor.check()["idle"] is True
    b.busy = True
    clock.now += 1
    state = monitor.check()
    assert state["idle"] is False and state["quiet_since"] is None
    assert state["since"] == gpus.iso(clock.now)
    assert {"name": "b", "busy": True, "reason": "switched busy"} in state["signals"]
    b.busy = False
    monitor.check()
    clock.now += 29 * 60
    assert monitor.check()["idle"] is False


def test_poweroff_runs_once_after_window_plus_grace(setup):
    app, monitor, clock, marker = setup(action="poweroff", window_min=30, grace_min=10)
    signal = Switch()
    idle.register_signal(app, "a", signal)
    monitor.check()
    assert monitor.last["action"]["due_at"] == gpus.iso(clock.now + 40 * 60)
    clock.now += 39 * 60
    monitor.check()
    assert not marker.exists()  # idle, but inside the grace period
    clock.now += 60
    state = monitor.check()
    assert marker.exists()
    assert state["action"]["ran_at"] == gpus.iso(clock.now) and state["action"]["result"] == "exit 0"
    marker.unlink()
    clock.now += 600
    monitor.check()
    assert not marker.exists()  # once per idle stretch
    signal.busy = True
    monitor.check()
    signal.busy = False
    monitor.check()
    clock.now += 40 * 60
    monitor.check()
    assert marker.exists()  # a new idle stretch may power off again


def test_reading_the_state_never_runs_the_action(setup):
    app, monitor, clock, marker = setup(action="poweroff", window_min=1, grace_min=1)
    idle.register_signal(app, "a", Switch())
    monitor.check(act=False)
    clock.now += 3600
    body = app.test_client().get("/v1/idle", headers=AUTH).json
    assert body["idle"] is True and not marker.exists()


def test_action_none_never_runs(setup):
    app, monitor, clock, marker = setup(action="none", window_min=1, grace_min=0)
    idle.register_signal(app, "a", Switch())
    monitor.check()
    clock.now += 10 * 3600
    state = monitor.check()
    assert state["idle"] is True and state["action"]["due_at"] is None and not marker.exists()


def test_failing_command_is_reported_not_retried(setup, tmp_path):
    app, monitor, clock, _ = setup(action="poweroff", window_min=1, grace_min=0)
    monitor.config = type(monitor.config)(action="poweroff", poweroff_command=f"{tmp_path}/no-such-command")
    idle.register_signal(app, "a", Switch())
    monitor.check()
    clock.now += 120
    state = monitor.check()
    assert state["action"]["result"].startswith("could not run")
    assert state["action"]["ran_at"] == gpus.iso(clock.now)


def test_a_signal_that_raises_counts_as_busy(setup):
    app, monitor, _, _ = setup(action="none", window_min=0)

    def broken():
        raise RuntimeError("vnc socket gone")

    idle.register_signal(app, "vnc", broken)
    state = monitor.check()
    assert state["idle"] is False
    assert state["signals"] == [
        {
            "name": "vnc",
            "busy": True,
            "reason": "signal failed (RuntimeError: vnc socket gone); counted as busy",
        }
    ]


def test_a_signal_may_return_a_plain_pair(setup):
    app, monitor, _, _ = setup(action="none", window_min=0)
    idle.register_signal(app, "desktop", lambda: (False, "no VNC client connected"))
    state = monitor.check()
    assert state["idle"] is True and state["reasons"] == ["desktop: no VNC client connected"]


def test_no_signals_is_never_idle(setup):
    _, monitor, _, _ = setup(action="none", window_min=0)
    assert monitor.check()["idle"] is False


# -- the built-in signals, fed by the real samplers ---------------------------------------------------


@pytest.fixture
def builtin(tmp_path, monkeypatch):
    def make(fake: FakePynvml, **idle_config):
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        app = create_app(from_dict(agent_config_dict(tmp_path, idle=idle_config)), token=TOKEN)
        gpus.sampler(app).sample_now()
        return app

    return make


@pytest.mark.parametrize(
    ("fake", "busy", "reason"),
    [
        (FakePynvml([FakeGpu(gpu_util=37)]), True, "GPU 0 at 37% (threshold 5%)"),
        (FakePynvml([FakeGpu(gpu_util=2), FakeGpu(gpu_util=4)]), False, "2 GPU(s) under 5%"),
        (FakePynvml([FakeGpu(gpu_util=2), FakeGpu(gpu_util=90)]), True, "GPU 1 at 90%"),
        (FakePynvml([FakeGpu(unsupported={"nvmlDeviceGetUtilizationRates"})]), True, "GPU 0 at unknown%"),
        (FakePynvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND), False, "no NVIDIA GPU to watch"),
        (FakePynvml([FakeGpu()], init_error=NVML_ERROR_UNKNOWN), True, "GPU state unknown"),
    ],
)
def test_gpu_signal(builtin, fake, busy, reason):
    app = builtin(fake)
    signal = app.extensions[idle.SIGNALS]["gpu"]()
    assert signal.busy is busy and reason in signal.reason


def test_gpu_signal_counts_a_stale_sample_as_busy(builtin):
    app = builtin(FakePynvml([FakeGpu(gpu_util=0)]), gpu_util_pct=5)
    sampler = gpus.sampler(app)
    sampler._last_at -= 3600  # the sampler has not produced anything for an hour
    signal = app.extensions[idle.SIGNALS]["gpu"]()
    assert signal.busy is True and "stale" in signal.reason


def test_cpu_signal_uses_the_host_meter(builtin):
    app = builtin(FakePynvml([]), cpu_pct=10)
    meter = host.sampler(app).meter
    meter.total_pct, meter.per_core_pct = 55.0, [55.0]
    assert app.extensions[idle.SIGNALS]["cpu"]() == idle.Signal(True, "CPU at 55% (threshold 10%)")
    meter.total_pct = 3.5
    assert app.extensions[idle.SIGNALS]["cpu"]() == idle.Signal(False, "CPU at 3.5%, under 10%")


def test_route_reports_builtin_signals(builtin):
    app = builtin(FakePynvml([FakeGpu(gpu_util=50)]))
    body = app.test_client().get("/v1/idle", headers=AUTH).json
    assert body["idle"] is False
    assert [s["name"] for s in body["signals"]] == [
        "gpu",
        "cpu",
        "scipion",
        "slurm",
        "agent_jobs",
        "ssh",
        "desktop_input",
    ]
    assert body["window_s"] == 30 * 60 and body["action"]["kind"] == "none"
    assert any(r.startswith("gpu: GPU 0 at 50%") for r in body["reasons"])


def test_background_monitor_powers_off_with_real_threads(tmp_path, monkeypatch):
    """Samplers and monitor on their own threads, tiny window and grace; cpu_pct 1000 is always idle."""
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([FakeGpu(gpu_util=0)]))
    marker = tmp_path / "powered-off"
    config = agent_config_dict(
        tmp_path,
        gpu={"interval_s": 0.05},
        host={"interval_s": 0.05, "imds_url": "http://127.0.0.1:9"},
        idle={
            "cpu_pct": 1000,
            "window_min": 0.005,
            "grace_min": 0.005,
            "check_interval_s": 0.05,
            "action": "poweroff",
            "poweroff_command": f"touch {marker}",
        },
    )
    app = create_app(from_dict(config), token=TOKEN)
    services.start_all(app)
    try:
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        services.stop_all(app)
    assert marker.exists()
    state = idle.monitor(app).last
    assert state["idle"] is True and state["action"]["result"] == "exit 0"


def test_requests_read_the_running_monitor_instead_of_probing(tmp_path, monkeypatch):
    """While the monitor's loop runs, /v1/idle and /metrics serve its last look: no request re-runs the
    signals' probes. With the loop stopped, a request looks afresh."""
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    config = agent_config_dict(
        tmp_path, idle={"check_interval_s": 60}, host={"imds_url": "http://127.0.0.1:9"}
    )
    app = create_app(from_dict(config), token=TOKEN)
    calls = []
    idle.register_signal(app, "probe", lambda: calls.append(1) or idle.Signal(False, "quiet"))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    monitor = idle.monitor(app)
    assert client.get("/v1/idle", headers=auth).status_code == 200
    assert len(calls) == 1  # no loop running: each request looks
    monitor.start()
    try:
        for path in ("/v1/idle", "/metrics", "/v1/idle"):
            assert client.get(path, headers=auth).status_code == 200
        assert len(calls) == 1  # served from the last look, which is fresh
    finally:
        monitor.stop()
    client.get("/v1/idle", headers=auth)
    assert len(calls) == 2


# -- decisions: stay, warn, stop; keep running; hibernate --------------------------------------------


class RecordingNotifier:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, str, float]] = []
        self.last_result = None
        self.keep = None

    def warn(self, title, body, expire_s, on_keep) -> None:
        self.warnings.append((title, body, expire_s))
        self.keep = on_keep


def test_each_decision_is_logged_once_with_its_signals(setup, caplog):
    app, monitor, clock, marker = setup(action="poweroff", window_min=30, grace_min=10)
    monitor.notifier = RecordingNotifier()
    signal = Switch(busy=True)
    idle.register_signal(app, "gpu", signal)
    caplog.set_level("INFO", logger="agent.idle")

    def decisions():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("idle decision")]

    for _ in range(3):
        monitor.check()
    assert decisions() == ["idle decision: stay (gpu: switched busy)"]
    signal.busy = False
    clock.now += 30 * 60 + 1
    monitor.check()  # quiet since this look: the window starts now
    clock.now += 30 * 60
    state = monitor.check()
    assert state["decision"]["decision"] == "warn" and state["warning"]["active"] is True
    assert state["warning"]["seconds_left"] == 600
    assert monitor.notifier.warnings and "poweroff in about 10 min" in monitor.notifier.warnings[0][1]
    clock.now += 60
    monitor.check()
    assert len(monitor.notifier.warnings) == 1  # warned once per stretch
    assert [m.split(" (")[0] for m in decisions()] == ["idle decision: stay", "idle decision: warn"]
    assert decisions()[-1].startswith("idle decision: warn (poweroff in 600 s unless someone keeps it")
    clock.now += 9 * 60
    state = monitor.check()
    assert state["decision"]["decision"] == "stop" and marker.exists()
    assert decisions()[-1] == "idle decision: stop (gpu: switched idle)"
    assert [d["decision"] for d in state["decision"]["history"]][-2:] == ["warn", "stop"]


def test_keep_running_postpones_through_http(setup):
    app, monitor, clock, marker = setup(action="poweroff", window_min=30, grace_min=10)
    idle.register_signal(app, "a", Switch())
    client = app.test_client()
    monitor.check()
    clock.now += 31 * 60
    assert monitor.check()["decision"]["decision"] == "warn"
    for bad in (
        {"minutes": 0},
        {"minutes": "soon"},
        {"minutes": True},
        {"minutes": 10**6},
        {"minutes": None},
    ):
        answer = client.post("/v1/idle/postpone", json=bad, headers=AUTH)
        assert answer.status_code == 400 and "minutes must be" in answer.json["error"]
    extra = client.post("/v1/idle/postpone", json={"minutes": 5, "until": "never"}, headers=AUTH)
    assert extra.status_code == 400 and "unknown field(s): until" in extra.json["error"]
    body = client.post("/v1/idle/postpone", json={"minutes": 45}, headers=AUTH).json
    assert body["postponed_until"] == gpus.iso(clock.now + 45 * 60)
    assert body["decision"]["decision"] == "stay"
    assert body["decision"]["reasons"][0].startswith("postponed until")
    clock.now += 44 * 60
    assert monitor.check()["decision"]["decision"] == "stay" and not marker.exists()
    clock.now += 61
    assert monitor.check()["decision"]["decision"] == "warn"  # a fresh warning after the postponement
    assert client.post("/v1/idle/postpone", headers=AUTH).json["postponed_until"] == gpus.iso(
        clock.now + 60 * 60  # idle.postpone_min
    )


def test_the_desktop_warning_button_postpones(setup):
    app, monitor, clock, _ = setup(action="poweroff", window_min=1, grace_min=5)
    monitor.notifier = RecordingNotifier()
    idle.register_signal(app, "a", Switch())
    monitor.check()
    clock.now += 61
    assert monitor.check()["decision"]["decision"] == "warn"
    monitor.notifier.keep()  # what the notification's "Keep running" runs
    assert monitor.last["decision"]["decision"] == "stay" and monitor.last["postponed_until"]


@pytest.mark.parametrize(
    ("offers", "expected", "why"),
    [
        ("freeze mem disk\n", "hibernated", "hibernate (the kernel offers suspend to disk)"),
        ("freeze mem\n", "powered-off", "hibernation not supported here"),
    ],
)
def test_hibernate_only_where_the_kernel_offers_it(tmp_path, offers, expected, why):
    state = tmp_path / "power-state"
    state.write_text(offers)
    config = from_dict(
        agent_config_dict(
            tmp_path,
            idle={
                "action": "hibernate",
                "power_state_file": str(state),
                "hibernate_command": f"touch {tmp_path / 'hibernated'}",
                "poweroff_command": f"touch {tmp_path / 'powered-off'}",
            },
        )
    ).idle
    command, reason = idle.power_action(config)
    assert why in reason
    subprocess.run(shlex.split(command), check=True)
    assert (tmp_path / expected).exists()


def test_a_stop_is_remembered_for_the_savings(setup, tmp_path):
    app, monitor, clock, marker = setup(action="poweroff", window_min=1, grace_min=0)
    monitor.state_dir = tmp_path / "state"
    idle.register_signal(app, "a", Switch())
    monitor.check()
    clock.now += 61
    monitor.check()
    assert marker.exists()
    stops = json.loads((tmp_path / "state" / idle.STOPS_FILE).read_text())
    assert stops == [{"stopped_at": clock.now, "action": "poweroff"}]


def test_stop_is_poweroff_with_shutdown_behaviour_stop(tmp_path):
    config = from_dict(agent_config_dict(tmp_path, idle={"action": "stop", "poweroff_command": "true"})).idle
    assert idle.power_action(config) == ("true", "poweroff (shutdown behaviour stop)")


def test_a_check_that_raises_is_logged_once_and_the_monitor_goes_on(tmp_path, monkeypatch, caplog):
    """The monitor's own loop (services.Periodic, the one guard for every service): the first check's
    clock raises, the failure is logged once with its traceback, and later checks still run."""
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    config = from_dict(agent_config_dict(tmp_path, idle={"check_interval_s": 0.02}))
    app = create_app(config, token=TOKEN)
    app.extensions[idle.SIGNALS].clear()
    app.extensions[idle.SIGNALS]["switch"] = Switch(busy=True)
    raise_next = []

    def clock() -> float:
        if raise_next:
            raise_next.clear()
            raise RuntimeError("odd clock")
        return 1_800_000_000.0

    monitor = idle.IdleMonitor(app, config.idle, clock=clock)
    raise_next.append(True)  # the first check the loop runs
    with caplog.at_level(logging.ERROR, logger="agent.services"):
        monitor.start()
        try:
            deadline = time.monotonic() + 10
            while monitor.last is None and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            monitor.stop()
    assert monitor.last is not None and monitor.last["idle"] is False  # a later check ran
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "idle-monitor: tick failed" in failures[0].getMessage() and failures[0].exc_info
