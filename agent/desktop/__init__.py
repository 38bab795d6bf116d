"""The browser desktop: VNC session state, logout that always brings the session back, password rotation.

`connected_clients(config)` is the signal the idle rule uses: VNC clients connected right now.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
import time
from pathlib import Path

import psutil
from flask import Blueprint, Flask, current_app, jsonify

from agent import services
from agent.config import Config, DesktopConfig, split_bind
from agent.desktop import password as vnc_password
from agent.desktop import rfb
from agent.desktop.session import SessionError, account, make_session, server_pid
from agent.errors import ApiError
from agent.openapi import REQUIRED, operation

log = logging.getLogger(__name__)
bp = Blueprint("desktop", __name__)
KEY = "scipioncloud.desktop"

# What the answers always carry (Desktop.state, logout, rotate_password); null where unknown.
STATE = REQUIRED(
    ["user", "vnc", "manager", "display", "port", "running", "rfb", "server_pid", "session_uptime_s",
     "connected_clients", "novnc", "problem"],
    user="string", vnc="string", display="integer", port="integer", running="boolean",
    connected_clients="integer", novnc="object",
)  # fmt: skip
LOGOUT = REQUIRED(
    ["status", "seconds", "rfb", "previous_server_pid", "server_pid"],
    status="string", seconds="number", rfb="string",
)  # fmt: skip
PASSWORD = REQUIRED(
    ["password", "updated", "note"],
    password="string",  # noqa: S106 - a JSON type, not a secret
    updated="array",
    note="string",
)

OPENAPI = {
    "/v1/desktop": {
        "get": operation(
            "VNC session state: running, display, port, connected clients, uptime, noVNC reachable",
            schema=STATE,
            _200="the state",
            _401="no token",
        )
    },
    "/v1/desktop/logout": {
        "post": operation(
            "End the desktop user's session and start a fresh one; answers once VNC speaks RFB again",
            schema=LOGOUT,
            _200="a fresh session accepts VNC connections",
            _401="no token",
            _409="another logout is under way",
            _503="the session did not come back in time (reason given)",
        )
    },
    "/v1/desktop/password": {
        "post": operation(
            "Rotate the VNC password (also the status page's); the new one is returned once",
            schema=PASSWORD,
            _200="the new password",
            _401="no token",
            _503="the password could not be written",
        )
    },
}


def desktop_config(config: Config | DesktopConfig) -> DesktopConfig:
    return config.desktop if isinstance(config, Config) else config


def connected_clients(config: Config | DesktopConfig) -> int:
    """VNC clients connected now (each browser tab is one websockify connection to the VNC port). The
    agent's own readiness probes are not viewers: connections whose other end is this process are left out."""
    port = desktop_config(config).vnc_port
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # pragma: no cover - Linux reads /proc/net/tcp without privileges
        return 0
    own = {c.laddr.port for c in connections if c.pid == os.getpid() and c.raddr and c.raddr.port == port}
    return sum(
        1
        for c in connections
        if c.status == psutil.CONN_ESTABLISHED
        and c.laddr
        and c.laddr.port == port
        and c.raddr
        and c.raddr.port not in own
    )


def viewers_signal(config: Config | DesktopConfig) -> tuple[bool, str]:
    """The idle rule's desktop signal: (busy, reason). Someone watching the desktop keeps the machine on."""
    count = connected_clients(config)
    if count:
        return True, f"{count} VNC viewer{'s' if count > 1 else ''} connected"
    return False, "no VNC viewer connected"


def http_answers(bind: str, timeout: float = 1.0) -> bool:
    """Does something speak HTTP on host:port (websockify, which serves noVNC's WebSocket)?"""
    try:
        host, port = split_bind(bind)
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return conn.recv(5) == b"HTTP/"
    except (OSError, ValueError):
        return False


class Desktop:
    def __init__(self, config: DesktopConfig) -> None:
        self.config = config
        self.problem: str | None = None
        self.session = None
        self.logout_lock = threading.Lock()
        try:
            self.session = make_session(config)
        except SessionError as exc:
            self.problem = str(exc)
            log.warning("desktop: %s", exc)
            return
        if self.session.kind == "agent" and not config.session_script.exists():
            self.problem = f"session script {config.session_script} is missing; apply the desktop role"
            log.warning("desktop: %s", self.problem)

    # services.Service
    def start(self) -> None:
        if self.session is not None and self.problem is None:
            self.session.start()

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()

    def state(self) -> dict:
        c = self.config
        pid = server_pid(c.display)
        uptime = None
        if pid is not None:
            try:
                uptime = round(time.time() - psutil.Process(pid).create_time(), 1)
            except psutil.NoSuchProcess:
                pid = None
        banner = rfb.banner(c.vnc_port, timeout=0.5)
        return {
            "user": c.user,
            "vnc": c.vnc,
            "manager": self.session.kind if self.session else None,
            "display": c.display,
            "port": c.vnc_port,
            "running": banner is not None,
            "rfb": banner.decode().strip() if banner else None,
            "server_pid": pid,
            "session_uptime_s": uptime,
            "connected_clients": connected_clients(c),
            "novnc": {"websockify": c.websockify, "reachable": http_answers(c.websockify)},
            "problem": self.problem,
        }

    def logout(self) -> dict:
        if self.session is None or self.problem:
            raise ApiError(503, f"the desktop is not available: {self.problem}")
        if not self.logout_lock.acquire(blocking=False):
            raise ApiError(409, "a logout is already under way; try again in a few seconds")
        try:
            before = server_pid(self.config.display)
            began = time.monotonic()
            try:
                self.session.restart()
            except SessionError as exc:
                raise ApiError(503, str(exc)) from None
            banner = self._wait_for_new_server(before, began + self.config.start_timeout_s)
            seconds = round(time.monotonic() - began, 2)
            if banner is None:
                raise ApiError(
                    503,
                    f"the VNC server on port {self.config.vnc_port} did not speak RFB within "
                    f"{self.config.start_timeout_s:g} s after the logout; see the agent's log and the "
                    "desktop session's journal",
                    seconds=seconds,
                )
            log.info("desktop logout: a fresh session answers after %.2f s", seconds)
            return {
                "status": "restarted",
                "seconds": seconds,
                "rfb": banner.decode().strip(),
                "previous_server_pid": before,
                "server_pid": server_pid(self.config.display),
            }
        finally:
            self.logout_lock.release()

    def _wait_for_new_server(self, before: int | None, deadline: float) -> bytes | None:
        # The old server is gone once restart() returns; still, accept only a banner from a new pid.
        while time.monotonic() < deadline:
            pid = server_pid(self.config.display)
            if pid is not None and pid != before:
                banner = rfb.wait_for_banner(self.config.vnc_port, min(1.0, deadline - time.monotonic()))
                if banner:
                    return banner
            else:
                time.sleep(0.05)
        return None

    def rotate_password(self) -> dict:
        c = self.config
        try:
            user = account(c.user)
        except SessionError as exc:
            raise ApiError(503, str(exc)) from None
        new = vnc_password.generate()
        passwd_file = (
            Path(str(c.passwd_file).replace("~", user.home, 1))
            if str(c.passwd_file).startswith("~")
            else c.passwd_file
        )
        try:
            vnc_password.store_vnc(new, passwd_file, c.vnc, user.uid, user.gid)
            updated = ["vnc"]
            if c.htpasswd_file.parent.is_dir():
                gid = c.htpasswd_file.stat().st_gid if c.htpasswd_file.exists() else -1
                vnc_password.store_htpasswd(c.user, new, c.htpasswd_file, gid)
                updated.append("status-page")
            if os.geteuid() == 0 and vnc_password.update_info_file(c.info_file, new):
                updated.append("info-file")
        except (vnc_password.PasswordError, OSError) as exc:
            raise ApiError(503, f"could not rotate the VNC password: {exc}") from None
        log.info("desktop password rotated (%s); new VNC connections need the new one", ", ".join(updated))
        return {
            "password": new,
            "updated": updated,
            "note": "shown once; connected viewers stay connected, new connections need this password",
        }


def init_app(app: Flask, config: Config) -> None:
    desktop = Desktop(config.desktop)
    app.extensions[KEY] = desktop
    services.register(app, "desktop", desktop)
    # The idle rule (agent.idle, its own capability) takes signals from others; without it, nothing to do.
    # A connected viewer alone keeps the machine on only when asked (idle.watch_vnc_viewers); by default the
    # desktop counts through its input (agent.idle_signals.desktop_input).
    if config.idle.watch_vnc_viewers and importlib.util.find_spec("agent.idle") is not None:
        from agent import idle

        idle.register_signal(app, "desktop", lambda: idle.Signal(*viewers_signal(config)))


def _desktop() -> Desktop:
    return current_app.extensions[KEY]


@bp.get("/v1/desktop")
def state():
    return jsonify(_desktop().state())


@bp.post("/v1/desktop/logout")
def logout():
    return jsonify(_desktop().logout())


@bp.post("/v1/desktop/password")
def rotate_password():
    return jsonify(_desktop().rotate_password())
