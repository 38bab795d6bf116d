"""The desktop capability without a running session: config, errors, password files, client counting."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import threading

import pytest

from agent.config import ConfigError, from_dict
from agent.desktop import connected_clients, password, rfb
from tests.conftest import agent_config_dict, free_port


def test_defaults_follow_the_display():
    config = from_dict({})
    assert config.desktop.vnc_port == 5901 and config.desktop.manager == "auto"
    assert from_dict({"desktop": {"display": 3}}).desktop.vnc_port == 5903
    assert from_dict({"desktop": {"display": 3, "port": 6000}}).desktop.vnc_port == 6000


def test_unknown_manager_is_refused():
    with pytest.raises(ConfigError, match=r"desktop\.manager: expected one of auto, systemd, agent"):
        from_dict({"desktop": {"manager": "supervisord"}})


def test_missing_desktop_user_is_reported_not_fatal(tmp_path, auth):
    from agent.app import create_app
    from tests.conftest import TOKEN

    config = from_dict(agent_config_dict(tmp_path, desktop={"user": "no-such-user-xyz", "manager": "agent"}))
    client = create_app(config, token=TOKEN).test_client()
    state = client.get("/v1/desktop", headers=auth)
    assert state.status_code == 200
    assert state.json["running"] is False and "no-such-user-xyz" in state.json["problem"]
    logout = client.post("/v1/desktop/logout", headers=auth)
    assert logout.status_code == 503 and "does not exist" in logout.json["error"]
    rotate = client.post("/v1/desktop/password", headers=auth)
    assert rotate.status_code == 503


def test_missing_session_script_is_reported(tmp_path, auth):
    import getpass

    from agent.app import create_app
    from tests.conftest import TOKEN

    desktop = {"user": getpass.getuser(), "manager": "agent", "session_script": str(tmp_path / "none")}
    client = create_app(from_dict(agent_config_dict(tmp_path, desktop=desktop)), token=TOKEN).test_client()
    response = client.post("/v1/desktop/logout", headers=auth)
    assert response.status_code == 503 and "apply the desktop role" in response.json["error"]


def test_generated_passwords_are_eight_unambiguous_characters():
    seen = {password.generate() for _ in range(200)}
    assert len(seen) == 200
    assert all(len(p) == 8 and not set(p) & set("0O1lI") for p in seen)


def test_vnc_password_file_is_private(tmp_path):
    target = tmp_path / ".vnc" / "passwd"
    password.store_vnc("Abcd2345", target, "tigervnc", -1, -1)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(target.read_bytes()) == 8 and b"Abcd2345" not in target.read_bytes()


def test_htpasswd_line_verifies_with_openssl(tmp_path):
    target = tmp_path / "htpasswd"
    password.store_htpasswd("ubuntu", "Abcd2345", target)
    user, hashed = target.read_text().strip().split(":", 1)
    salt = hashed.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input="Abcd2345", capture_output=True, text=True
    )
    assert user == "ubuntu" and again.stdout.strip() == hashed
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_info_file_keeps_its_other_lines(tmp_path):
    info = tmp_path / "info"
    info.write_text(
        "url=https://h/\npassword=old12345\nSCIPIONCLOUD-DESKTOP url=https://h/ password=old12345\n"
    )
    assert password.update_info_file(info, "new23456")
    assert info.read_text().count("new23456") == 2 and "old12345" not in info.read_text()
    assert not password.update_info_file(tmp_path / "missing", "x")


def test_vncpasswd_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(password.VNCPASSWD, "tigervnc", str(tmp_path / "no-vncpasswd"))
    with pytest.raises(password.PasswordError, match="is not installed"):
        password.store_vnc("Abcd2345", tmp_path / "p", "tigervnc", -1, -1)


@contextlib.contextmanager
def viewer(port: int):
    """A client in another process (the agent leaves its own process's connections out of the count)."""
    from tests.support.desktop import viewer_process

    with viewer_process(port):
        yield


@pytest.fixture
def fake_rfb_server():
    """A listener that greets like a VNC server; stands in only for the banner check."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"RFB 003.008\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_banner_is_read(fake_rfb_server):
    assert rfb.banner(fake_rfb_server) == b"RFB 003.008\n"
    assert rfb.banner(free_port()) is None


def test_connected_clients_counts_established_connections(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        config = from_dict(agent_config_dict(tmp_path, desktop={"port": port}))
        assert connected_clients(config) == 0
        with viewer(port), viewer(port):
            accepted = [server.accept()[0] for _ in range(2)]
            try:
                assert connected_clients(config) == 2
                assert connected_clients(config.desktop) == 2
            finally:
                for s in accepted:
                    s.close()


def test_viewers_make_the_machine_busy(tmp_path):
    from agent.desktop import viewers_signal

    with socket.create_server(("127.0.0.1", 0)) as server:
        config = from_dict(agent_config_dict(tmp_path, desktop={"port": server.getsockname()[1]}))
        assert viewers_signal(config) == (False, "no VNC viewer connected")
        with viewer(server.getsockname()[1]), server.accept()[0]:
            assert viewers_signal(config) == (True, "1 VNC viewer connected")


def test_idle_rule_hears_the_desktop(tmp_path, auth):
    idle = pytest.importorskip("agent.idle", reason="the idle rule (branch reporting) is not merged here")
    from agent.app import create_app
    from tests.conftest import TOKEN

    with socket.create_server(("127.0.0.1", 0)) as server:
        config = from_dict(agent_config_dict(tmp_path, desktop={"port": server.getsockname()[1]}))
        # by default input counts, not a connection
        assert "desktop" not in create_app(config, token=TOKEN).extensions[idle.SIGNALS]
        config = from_dict(
            agent_config_dict(
                tmp_path, desktop={"port": server.getsockname()[1]}, idle={"watch_vnc_viewers": True}
            )
        )
        app = create_app(config, token=TOKEN)
        signal = app.extensions[idle.SIGNALS]["desktop"]
        assert signal() == idle.Signal(False, "no VNC viewer connected")
        with viewer(server.getsockname()[1]), server.accept()[0]:
            assert signal() == idle.Signal(True, "1 VNC viewer connected")
            body = app.test_client().get("/v1/idle", headers=auth).json
            assert "desktop: 1 VNC viewer connected" in body["reasons"]


def test_the_agents_own_probe_is_not_a_viewer(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        config = from_dict(agent_config_dict(tmp_path, desktop={"port": port}))
        with socket.create_connection(("127.0.0.1", port)) as probe, server.accept()[0]:
            probe.getsockname()  # a connection from this very process, as rfb.banner makes
            assert connected_clients(config) == 0


@pytest.fixture
def fake_systemctl(tmp_path, monkeypatch):
    """systemd is not PID 1 here: a `systemctl` on PATH that records its arguments and fails on request."""
    record = tmp_path / "systemctl.args"
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {record}\n'
        f"[ -e {tmp_path}/fail ] && {{ echo 'Unit scipioncloud-desktop.service not found.' >&2; exit 5; }}\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    return record


def test_systemd_manager_restarts_the_unit(tmp_path, fake_systemctl):
    from agent.desktop.session import SessionError, make_session

    session = make_session(from_dict({"desktop": {"manager": "systemd", "display": 59}}).desktop)
    assert session.kind == "systemd"
    session.restart()
    assert session.running()
    assert fake_systemctl.read_text().splitlines() == [
        "restart scipioncloud-desktop.service",
        "is-active --quiet scipioncloud-desktop.service",
    ]
    (tmp_path / "fail").touch()
    with pytest.raises(SessionError, match="not found"):
        session.restart()
