"""Keep the desktop user's VNC session alive, and end it on request so that a fresh one starts.

The session itself is the role's script (roles/desktop/files/scipioncloud-desktop-session): Xvnc plus the
desktop, ending when either ends. Under systemd its unit restarts it (Restart=always) and a logout is a
`systemctl restart`; where systemd is not PID 1 (containers, tests) the agent runs the same script in a
supervisor thread and restarts it the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.config import DesktopConfig

log = logging.getLogger(__name__)


class SessionError(RuntimeError):
    pass


def systemd_is_pid1() -> bool:
    return Path("/run/systemd/system").is_dir()


def lock_path(display: int) -> Path:
    return Path(f"/tmp/.X{display}-lock")  # noqa: S108 - X servers put their locks here, always


def socket_path(display: int) -> Path:
    return Path(f"/tmp/.X11-unix/X{display}")  # noqa: S108


def server_pid(display: int) -> int | None:
    """The pid of the X server holding the display, from its lock file; None when none is alive."""
    try:
        pid = int(lock_path(display).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def clear_stale_lock(display: int) -> bool:
    """Remove the lock and socket a killed server left behind (a new server refuses to start over them)."""
    if server_pid(display) is not None:
        return False
    removed = False
    for path in (lock_path(display), socket_path(display)):
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed


def display_processes(display: int, uid: int, exclude: set[int]) -> list[psutil.Process]:
    """Processes of `uid` that live on DISPLAY=:N: what a session left running after its group ended."""
    wanted = {f":{display}", f":{display}.0"}
    found = []
    for proc in psutil.process_iter(["uids", "pid"]):
        if proc.pid in exclude or proc.info["uids"] is None or proc.info["uids"].real != uid:
            continue
        try:
            if proc.environ().get("DISPLAY") in wanted:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def end_processes(procs: list[psutil.Process], grace: float = 3.0) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: str


def account(user: str) -> Account:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SessionError(
            f"desktop user {user!r} does not exist; set desktop.user in the agent config"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


class SystemdSession:
    """systemd runs the unit; the agent only asks it to restart (its cgroup holds every session process)."""

    kind = "systemd"

    def __init__(self, config: DesktopConfig) -> None:
        self.config = config

    def start(self) -> None:  # systemd starts it at boot
        pass

    def stop(self) -> None:  # and keeps it when the agent stops
        pass

    def restart(self) -> None:
        result = subprocess.run(
            ["systemctl", "restart", self.config.unit], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise SessionError(f"systemctl restart {self.config.unit} failed: {result.stderr.strip()}")
        clear_stale_lock(self.config.display)

    def running(self) -> bool:
        result = subprocess.run(["systemctl", "is-active", "--quiet", self.config.unit], timeout=30)
        return result.returncode == 0


class SupervisedSession:
    """The agent runs the session script itself and restarts it whenever it ends, like Restart=always."""

    kind = "agent"
    QUICK_EXIT_S = 5.0  # a session that dies sooner than this is restarted with a growing delay

    def __init__(self, config: DesktopConfig) -> None:
        self.config = config
        self.account = account(config.user)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requested = False
        self._thread: threading.Thread | None = None
        self.starts = 0
        self.last_exit: int | None = None

    def _command(self) -> list[str]:
        return [str(self.config.session_script), str(self.config.env_file)]

    def _environment(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "USER": self.account.name}
        if self.account.uid == os.getuid():
            env["HOME"] = os.environ.get("HOME", self.account.home)  # tests keep HOME in a temp dir
        else:
            env["HOME"] = self.account.home
        env["LOGNAME"] = self.account.name
        return env

    def _spawn(self) -> subprocess.Popen:
        clear_stale_lock(self.config.display)
        as_other = self.account.uid != os.getuid()
        process = subprocess.Popen(
            self._command(),
            env=self._environment(),
            cwd=self._environment()["HOME"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a logout ends everything it started
            user=self.account.uid if as_other else None,
            group=self.account.gid if as_other else None,
            extra_groups=os.getgrouplist(self.account.name, self.account.gid) if as_other else None,
        )
        self.starts += 1
        log.info("desktop session started on :%d (pid %d)", self.config.display, process.pid)
        return process

    def _loop(self) -> None:
        delay = 0.0
        while not self._stopping.is_set():
            # restart() holds the lock while it ends a session: the next one starts after its tidying.
            with self._lock:
                if self._stopping.is_set():
                    break
                self._requested = False
                started = time.monotonic()
                try:
                    self._process = self._spawn()
                except OSError as exc:
                    log.error("cannot start the desktop session: %s", exc)
                    self._process = None
            if self._process is None:
                self._stopping.wait(5)
                continue
            code = self._process.wait()
            self.last_exit = code
            if self._stopping.is_set() or self._requested:
                delay = 0.0
                continue
            lived = time.monotonic() - started
            # As systemd does with the unit's cgroup: what the ended session left running goes too.
            with self._lock:
                end_processes(display_processes(self.config.display, self.account.uid, {os.getpid()}))
                clear_stale_lock(self.config.display)
            delay = 0.0 if lived > self.QUICK_EXIT_S else min(max(delay * 2, 0.5), 10.0)
            log.info("desktop session ended (status %s after %.1f s); restarting", code, lived)
            if delay:
                self._stopping.wait(delay)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="desktop-session", daemon=True)
        self._thread.start()

    def _end_current(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # the script tidies up Xvnc and the session
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Programs that left the group (double forks, daemons) but still live on the display.
        end_processes(display_processes(self.config.display, self.account.uid, {os.getpid()}))
        clear_stale_lock(self.config.display)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._end_current()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def restart(self) -> None:
        with self._lock:
            self._requested = True
            self._end_current()

    def running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None


def make_session(config: DesktopConfig) -> SystemdSession | SupervisedSession:
    manager = config.manager
    if manager == "auto":
        manager = "systemd" if systemd_is_pid1() else "agent"
    return SystemdSession(config) if manager == "systemd" else SupervisedSession(config)
