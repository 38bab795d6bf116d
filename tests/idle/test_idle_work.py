"""What counts as work, with real processes: a pyworkflow protocol, an SSH login on a loopback sshd, a desktop
(TigerVNC's X server) with and without input, a Slurm job, an agent transfer in flight; the GPU only through
the NVML boundary (tests/support/fake_pynvml.py), listing this test's own processes as GPU processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent import idle, inflight
from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict
from tests.support import processes, pyworkflow_env
from tests.support.fake_pynvml import FakeGpu, FakePynvml

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    def make(fake: FakePynvml | None = None, **sections):
        monkeypatch.setitem(sys.modules, "pynvml", fake or FakePynvml([]))
        return create_app(from_dict(agent_config_dict(tmp_path, **sections)), token=TOKEN)

    return make


def verdict(app, name: str) -> idle.Signal:
    return app.extensions[idle.SIGNALS][name]()


def wait_until(check, timeout_s: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# -- Scipion --------------------------------------------------------------------------------------------


def test_a_running_pyworkflow_protocol_is_work_and_a_finished_or_dead_one_is_not(tmp_path, make_app):
    launched = pyworkflow_env.launch_sleeping_protocols(tmp_path, "idle-test", 1, 12)
    try:
        app = make_app(idle={"project_dirs": [str(pyworkflow_env.projects_dir(tmp_path))]})
        short, long = launched
        project = Path(long["project"])
        pyworkflow_env.wait_for_status(project, short["id"], {"finished"})
        pyworkflow_env.wait_for_status(project, long["id"], {"running"})
        signal = verdict(app, "scipion")
        assert signal.busy is True
        assert f"idle-test/{long['id']} sleep 12 steps (running)" in signal.reason
        assert f"{short['id']} sleep 1 steps" not in signal.reason  # finished: not work
        body = app.test_client().get("/v1/idle", headers=AUTH).json
        reasons = body["decision"]["reasons"]
        assert any(r.startswith("scipion: Scipion protocol(s) idle-test/") for r in reasons)
        # The run dies (a crash): its db still says "running", but no process is left
        pyworkflow_env.kill_runs(launched)
        signal = verdict(app, "scipion")
        assert signal.busy is False and "no Scipion protocol running or queued" in signal.reason
    finally:
        pyworkflow_env.kill_runs(launched)


def test_an_unreadable_project_counts_as_busy(tmp_path, make_app):
    project = tmp_path / "projects" / "broken"
    project.mkdir(parents=True)
    (project / "project.sqlite").write_text("not a database")
    app = make_app(idle={"project_dirs": [str(tmp_path / "projects")]})
    signal = verdict(app, "scipion")
    assert signal.busy is True and "cannot read project(s)" in signal.reason


# -- SSH ------------------------------------------------------------------------------------------------


@pytest.fixture
def login_sshd(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare") or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root, unshare and openssh-server (tools/apt-packages.txt)")
    from tests.support.login_sshd import LoginSshd

    with LoginSshd(tmp_path) as server:
        yield server


def test_an_ssh_session_counts_while_someone_types(login_sshd, make_app):
    app = make_app(idle={"utmp_file": str(login_sshd.utmp), "input_idle_min": 1})
    assert verdict(app, "ssh") == idle.Signal(False, "no SSH session")
    session = login_sshd.session()
    try:
        session.type("true")
        signal = verdict(app, "ssh")
        assert signal.busy is True and "root@pts/" in signal.reason and "from 127.0.0.1" in signal.reason
        # nobody typed for an hour: the terminal's access time, which `w` reads as idle time
        tty = signal.reason.split("root@", 1)[1].split(" ", 1)[0]
        hour_ago = time.time() - 3600
        os.utime(f"/dev/{tty}", (hour_ago, hour_ago))
        assert verdict(app, "ssh") == idle.Signal(False, "1 SSH session(s), none with input in 60 s")
        session.type("echo typing again")  # the shell reads the input: the kernel moves the access time
        assert verdict(app, "ssh").busy is True
    finally:
        session.close()
    wait_until(lambda: not verdict(app, "ssh").busy and "no SSH session" in verdict(app, "ssh").reason)


# -- the desktop ----------------------------------------------------------------------------------------


@pytest.fixture
def x_display(tmp_path):
    """TigerVNC's X server (the desktop's), on a display it picks itself (-displayfd)."""
    for tool in ("Xvnc", "xdotool", "xprintidle"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing (tools/apt-packages.txt)")
    read, write = os.pipe()
    log = (tmp_path / "xvnc.log").open("w")
    server = subprocess.Popen(
        ["Xvnc", "-displayfd", str(write), "-SecurityTypes", "None", "-localhost", "-rfbport", "0",
         "-nolisten", "tcp", "-geometry", "640x480"],
        pass_fds=(write,), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read) as pipe:
        number = int(pipe.readline().strip())
    X_SERVERS[number] = server.pid
    try:
        yield number
    finally:
        server.send_signal(signal.SIGCONT)  # a test may have frozen it
        processes.stop(server)
        log.close()


X_SERVERS: dict[int, int] = {}  # display -> the Xvnc pid the fixture started


def x_server_pid(display: int) -> int:
    return X_SERVERS[display]


def xdotool(display: int, *args: str) -> None:
    subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": f":{display}"}, check=True, timeout=10)


def test_the_desktop_counts_only_with_recent_input(x_display, make_app, tmp_path):
    app = make_app(
        desktop={"display": x_display, "user": "root"},
        idle={"input_idle_min": 2 / 60, "xauthority": str(tmp_path / "no-xauthority")},
    )
    # nobody touched the new desktop: after 2 s it is idle, though the X server (and a viewer) is up
    signal = wait_until(lambda: (s := verdict(app, "desktop_input")) and not s.busy and s, what="no input")
    assert signal.reason.startswith(f"desktop :{x_display}: no input for ")
    xdotool(x_display, "mousemove", "100", "100")
    signal = verdict(app, "desktop_input")
    assert signal.busy is True and signal.reason == f"desktop :{x_display} had input 0 s ago"


def test_no_x_server_is_idle_and_a_hung_one_is_busy(x_display, make_app, tmp_path):
    app = make_app(desktop={"display": 250})
    assert verdict(app, "desktop_input") == idle.Signal(False, "no X server on :250")
    app = make_app(desktop={"display": x_display}, idle={"xauthority": str(tmp_path / "none")})
    pid = x_server_pid(x_display)
    os.kill(pid, signal.SIGSTOP)  # a wedged X server: the query must time out, not hang the idle rule
    try:
        started = time.monotonic()
        result = verdict(app, "desktop_input")
        assert time.monotonic() - started < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.busy is True and f"the X server on :{x_display} did not answer" in result.reason


# -- the GPU, through the NVML boundary -------------------------------------------------------------------


def test_a_gpu_compute_process_is_work_even_when_utilisation_is_low(make_app):
    child = subprocess.Popen(["sleep", "60"])
    try:
        fake = FakePynvml([FakeGpu(gpu_util=0, processes=[(child.pid, 2 * 2**30)])])
        app = make_app(fake)
        from agent import gpus

        gpus.sampler(app).sample_now()
        signal = verdict(app, "gpu")
        assert signal.busy is True
        assert f"GPU 0 runs compute process(es) {child.pid} (sleep)" in signal.reason
        fake.gpus[0].processes = []
        gpus.sampler(app).sample_now()
        assert verdict(app, "gpu") == idle.Signal(False, "1 GPU(s) under 5%, no compute process")
    finally:
        processes.stop(child)


# -- the agent's own jobs ---------------------------------------------------------------------------------


def test_a_transfer_in_flight_is_work_until_its_process_ends(make_app, tmp_path):
    app = make_app()
    assert verdict(app, "agent_jobs").busy is False
    source = tmp_path / "movie.tiff"
    source.write_bytes(os.urandom(1 << 20))
    # a real copy, slowed down, standing for a transfer job's worker process
    copy = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, shutil\nsrc, dst = open(sys.argv[1], 'rb'), open(sys.argv[2], 'wb')\n"
         "while chunk := src.read(65536):\n    dst.write(chunk); dst.flush(); time.sleep(0.5)\n",
         str(source), str(tmp_path / "copy.tiff")],
    )  # fmt: skip
    try:
        with inflight.track(app, "transfer", "s3://lab-movies/movie.tiff", pid=copy.pid):
            signal = verdict(app, "agent_jobs")
            assert signal == idle.Signal(True, "agent job(s) in flight: transfer s3://lab-movies/movie.tiff")
            processes.stop(copy)  # the worker dies without the job saying so: it must not keep the machine on
            assert verdict(app, "agent_jobs").busy is False
        job = inflight.begin(app, "prewarm", "/dev/nvme1n1")
        assert verdict(app, "agent_jobs").busy is True
        inflight.end(app, job)
        assert verdict(app, "agent_jobs").busy is False
    finally:
        processes.stop(copy)


# -- Slurm ----------------------------------------------------------------------------------------------


def test_a_slurm_job_on_this_node_is_work(tmp_path, make_app):
    from tests.support import slurm

    missing = slurm.available()
    if missing:
        pytest.skip(missing)
    with slurm.LocalSlurm(tmp_path / "slurm") as cluster:
        app = make_app(idle={"slurm_conf": str(cluster.conf), "slurm_node": slurm.NODE})
        assert verdict(app, "slurm") == idle.Signal(False, f"no Slurm job on {slurm.NODE}")
        script = tmp_path / "job.sh"
        script.write_text("#!/bin/sh\nsleep 60\n")
        job = cluster.sbatch(script, cwd=tmp_path)
        signal = wait_until(lambda: (s := verdict(app, "slurm")).busy and "RUNNING" in s.reason.upper() and s)
        assert f"Slurm job(s) on {slurm.NODE}: {job} " in signal.reason
        # the usage report finds the job's processes on this node the same way (scontrol listpids)
        from agent import slurm_jobs

        def names() -> set[str]:
            found = set()
            for pid in slurm_jobs.job_pids(job, cluster.conf):
                with contextlib.suppress(psutil.Error):
                    found.add(psutil.Process(pid).name())
            return found

        # the batch shell first, then its `sleep`: the job's processes as Slurm tracks them on this node
        wait_until(lambda: "sleep" in names(), what="the job's sleep among its processes")
        cluster.run("scancel", job)
        wait_until(lambda: not verdict(app, "slurm").busy, what="the job to leave the queue")
        # a job still waiting in this node's partition is work to come: it keeps the node on
        held = cluster.run("sbatch", "--begin=now+1hour", f"--output={tmp_path}/held.out", str(script))
        held = held.stdout.split()[-1]
        signal = wait_until(lambda: (s := verdict(app, "slurm")).busy and s, what="the pending job")
        assert f"{held} " in signal.reason and "(pending," in signal.reason
        cluster.run("scancel", held)


def test_slurm_without_a_configuration_is_not_watched(make_app, tmp_path):
    app = make_app(idle={"slurm_conf": str(tmp_path / "no-slurm.conf")})
    signal = verdict(app, "slurm")
    assert signal.busy is False and "no Slurm on this machine" in signal.reason


# -- every signal can be turned off -----------------------------------------------------------------------


def test_each_signal_can_be_turned_off(make_app):
    names = ["gpu", "cpu", "scipion", "slurm", "inflight", "ssh", "desktop_input"]
    app = make_app(idle={f"watch_{name}": False for name in names})
    assert app.extensions.get(idle.SIGNALS, {}) == {}
    body = app.test_client().get("/v1/idle", headers=AUTH).json
    assert body["idle"] is False and body["decision"]["reasons"] == ["no signal to watch: never idle"]


# -- the warning in the desktop session ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_the_warning_shows_on_the_desktop_and_keep_running_postpones(x_display, make_app, tmp_path):
    """A real libnotify client (notify-send) on the session's D-Bus, a real notification daemon (dunst) on
    the desktop's X server; the user's click is dunst's own `dunstctl action`."""
    for tool in ("dbus-daemon", "dunst", "dunstctl", "notify-send"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing (tools/apt-packages.txt)")
    from agent import idle_notify

    bus = f"unix:path={tmp_path / 'session-bus'}"
    session = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus, "DISPLAY": f":{x_display}"}
    log = (tmp_path / "session.log").open("w")
    daemons = [
        subprocess.Popen(["dbus-daemon", "--session", f"--address={bus}", "--nofork"], stdout=log, stderr=log)
    ]
    try:
        wait_until(lambda: (tmp_path / "session-bus").exists(), what="the session bus")
        daemons.append(subprocess.Popen(["dunst"], env=session, stdout=log, stderr=log))
        import getpass

        app = make_app(
            desktop={"display": x_display, "user": getpass.getuser()},
            idle={"action": "poweroff", "window_min": 1, "grace_min": 5, "session_bus": bus,
                  "poweroff_command": f"touch {tmp_path / 'powered-off'}"},
        )  # fmt: skip
        app.extensions[idle.SIGNALS].clear()
        idle.register_signal(app, "test", lambda: idle.Signal(False, "nothing runs"))
        config = app.config["SCIPIONCLOUD"]
        clock = Clock()
        # no bus configured: the agent finds the session's own in its processes' environment (dunst's here)
        assert idle_notify.session_env(config.desktop.user, x_display, "")["DBUS_SESSION_BUS_ADDRESS"] == bus
        notifier = idle_notify.Notifier("notify-send", config.desktop.user, x_display, "")
        monitor = idle.IdleMonitor(app, config.idle, clock=clock, notifier=notifier)
        monitor.check()
        clock.now += 61
        state = monitor.check()
        assert state["decision"]["decision"] == "warn"

        def displayed() -> int:
            done = subprocess.run(
                ["dunstctl", "count", "displayed"], env=session, capture_output=True, text=True
            )
            return int(done.stdout.strip() or 0)

        wait_until(lambda: displayed() == 1, what="the notification on the desktop")
        subprocess.run(["dunstctl", "action", "0"], env=session, check=True, timeout=10)  # "Keep running"
        notifier.join(10)
        assert notifier.last_result == "shown; user chose 'default'"
        assert monitor.last["decision"]["decision"] == "stay"
        assert monitor.last["postponed_until"] is not None
        assert not (tmp_path / "powered-off").exists()
    finally:
        for daemon in reversed(daemons):
            processes.stop(daemon)
        log.close()
