"""The desktop role's session, websockify and nginx running for real (TigerVNC, noVNC, headless Chromium),
with the agent supervising the session as it does where systemd is not PID 1."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time

import pytest
import requests

from agent.desktop.session import server_pid
from tests.support import rfb_client
from tests.support.desktop import (
    SESSION_RGB,
    DesktopStack,
    browser_context,
    colour_fraction,
    log_out_from_the_status_page,
    run_watching_command_lines,
    screenshot,
)

pytestmark = pytest.mark.integration
RED = (0xC0, 0x20, 0x20)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    desktop = DesktopStack(tmp_path_factory.mktemp("desktop"))
    try:
        desktop.start()
        yield desktop
    finally:
        desktop.stop()
    # Nothing of the session may outlive the agent that supervised it.
    assert server_pid(desktop.display) is None
    assert not os.path.exists(f"/tmp/.X{desktop.display}-lock")


def wait_new_server(stack: DesktopStack, old: int | None, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = server_pid(stack.display)
        if pid is not None and pid != old:
            try:
                rfb_client.connect(stack.vnc_port, stack.password)
                return pid
            except (OSError, rfb_client.VncRefused):
                pass
        time.sleep(0.1)
    raise AssertionError(f"no new VNC server on :{stack.display} within {timeout} s")


def window_manager_ready(env: dict[str, str]) -> bool:
    """Does a window manager manage the display's screen (EWMH: _NET_SUPPORTING_WM_CHECK on the root)?"""
    probe = subprocess.run(
        ["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"], env=env, capture_output=True, text=True, timeout=10
    )
    return probe.returncode == 0 and "window id" in probe.stdout


def test_first_boot_writes_console_line_and_private_files(stack):
    line = (stack.root / "console").read_text().strip().splitlines()[-1]
    match = re.fullmatch(r"SCIPIONCLOUD-DESKTOP url=https://(\S+):(\d+)/ password=(\S{8})", line)
    assert match, line
    assert int(match.group(2)) == stack.https_port and match.group(3) == stack.password
    for path in (
        stack.root / "desktop-info.txt",
        stack.home / ".vnc" / "passwd",
        stack.root / "tls" / "desktop.key",
        stack.root / "agent-auth.conf",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # A second boot keeps the password, prints the line again and never puts the password on stdout.
    again = stack.firstboot()
    assert stack.password == match.group(3)
    assert stack.password not in again.stdout + again.stderr
    assert (stack.root / "console").read_text().count("SCIPIONCLOUD-DESKTOP") == 2


def test_desktop_state_reports_the_session(stack):
    state = stack.agent.get("/v1/desktop").json()
    assert state["running"] is True and state["rfb"].startswith("RFB 003.00")
    assert state["display"] == stack.display and state["port"] == stack.vnc_port
    assert state["server_pid"] == server_pid(stack.display)
    assert state["session_uptime_s"] >= 0
    assert state["novnc"]["reachable"] is True
    assert state["manager"] == "agent"


def test_novnc_over_https_shows_the_desktop(stack, tmp_path):
    png = screenshot(
        stack.novnc_url(stack.password), tmp_path / "desktop.png", expect=SESSION_RGB, login=stack.login
    )
    assert colour_fraction(png, SESSION_RGB) > 0.3


def test_http_redirects_to_https(stack):
    response = requests.get(f"http://127.0.0.1:{stack.http_port}/vnc.html", allow_redirects=False, timeout=5)
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://127.0.0.1:{stack.https_port}/vnc.html"


def test_vnc_listens_on_loopback_only(stack):
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{stack.vnc_port}"], capture_output=True, text=True)
    addresses = {line.split()[3] for line in listening.stdout.splitlines()}
    assert addresses and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addresses), addresses


def test_logout_brings_a_fresh_session(stack, tmp_path):
    env = {**os.environ, "DISPLAY": f":{stack.display}", "XAUTHORITY": str(stack.home / ".Xauthority")}
    # Paint only once the session has painted its own colour (its openbox --startup), or red is overwritten.
    first = screenshot(
        stack.novnc_url(stack.password), tmp_path / "first.png", expect=SESSION_RGB, login=stack.login
    )
    assert colour_fraction(first, SESSION_RGB) > 0.3
    subprocess.run(["xsetroot", "-solid", "rgb:c0/20/20"], env=env, check=True, timeout=10)
    before = screenshot(
        stack.novnc_url(stack.password), tmp_path / "before.png", expect=RED, login=stack.login
    )
    assert colour_fraction(before, RED) > 0.3  # the change is visible: this is the old session

    old = server_pid(stack.display)
    response = stack.agent.request("POST", "/v1/desktop/logout")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["previous_server_pid"] == old and body["server_pid"] not in (None, old)
    assert body["rfb"].startswith("RFB 003.00")

    after = screenshot(
        stack.novnc_url(stack.password), tmp_path / "after.png", expect=SESSION_RGB, login=stack.login
    )
    assert colour_fraction(after, RED) < 0.01
    assert colour_fraction(after, SESSION_RGB) > 0.3


def test_logout_from_the_desktop_menu_brings_a_fresh_session(stack):
    # What "Log out" in the desktop's own menu does: the session program ends by itself.
    old = server_pid(stack.display)
    env = {**os.environ, "DISPLAY": f":{stack.display}", "XAUTHORITY": str(stack.home / ".Xauthority")}
    # The message reaches openbox only once it manages the screen, which it announces on the root window.
    # Ask once, then: asking again could reach a server already gone, or the fresh session's openbox.
    deadline = time.monotonic() + 15
    while not window_manager_ready(env):
        assert time.monotonic() < deadline, "openbox never managed the screen"
        time.sleep(0.1)
    assert server_pid(stack.display) == old
    # Its exit status says little: when openbox acts at once, the session ends and the X server closes
    # this very client's connection before it is done (XIO error, status 1). The fresh session decides.
    asked = subprocess.run(["openbox", "--exit"], env=env, capture_output=True, text=True, timeout=10)
    try:
        assert wait_new_server(stack, old) != old
    except AssertionError as exc:
        raise AssertionError(f"{exc}; openbox --exit said ({asked.returncode}): {asked.stderr}") from None


def test_logout_ends_programs_that_left_the_session(stack):
    env = {**os.environ, "DISPLAY": f":{stack.display}", "XAUTHORITY": str(stack.home / ".Xauthority")}
    # A daemon in its own session and process group, as dbus-launch and friends make them.
    stray = subprocess.Popen(["setsid", "sleep", "600"], env=env, stdin=subprocess.DEVNULL)
    try:
        response = stack.agent.request("POST", "/v1/desktop/logout")
        assert response.status_code == 200, response.text
        assert stray.wait(10) != 0  # ended by a signal, not by finishing
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_the_desktop_launcher_logs_out_through_the_agent(stack):
    from tests.support.desktop import render

    launcher = render("scipioncloud-logout.desktop.j2", stack.vars, stack.root / "logout.desktop").read_text()
    helper = render("desktop-logout.j2", stack.vars, stack.root / "desktop-logout")
    assert f"Exec=sudo -n {stack.vars['desktop_libexec_dir']}/desktop-logout" in launcher
    old = server_pid(stack.display)
    # Every user may read /proc/PID/cmdline: watch them all while the real helper runs.
    result = run_watching_command_lines(["sh", str(helper)], stack.agent.token)
    assert result.returncode == 0, result.stderr
    assert '"status":"restarted"' in result.stdout.replace(" ", "")
    assert server_pid(stack.display) not in (None, old)
    assert stack.agent.token not in result.stdout + result.stderr
    assert "curl" in result.programs  # the scan ran while the helper talked to the agent
    assert result.leaks == [], f"the agent token is on these command lines: {result.leaks}"


def test_twenty_logouts_in_a_row(stack):
    pids = [server_pid(stack.display)]
    for cycle in range(20):
        response = stack.agent.request("POST", "/v1/desktop/logout")
        assert response.status_code == 200, f"cycle {cycle}: {response.text}"
        init = rfb_client.connect(stack.vnc_port, stack.password)  # the fresh desktop takes a viewer
        assert (init.width, init.height) == (800, 600)
        pids.append(response.json()["server_pid"])
    assert len(set(pids)) == 21
    servers = subprocess.run(["pgrep", "-f", f"Xtigervnc :{stack.display} "], capture_output=True, text=True)
    assert len(servers.stdout.split()) == 1  # no session left behind by any cycle


def test_sigkill_of_the_vnc_server_brings_the_session_back(stack):
    old = server_pid(stack.display)
    os.kill(old, signal.SIGKILL)
    new = wait_new_server(stack, old)
    assert new != old
    assert stack.agent.get("/v1/desktop").json()["running"] is True


def test_connected_clients_counts_viewers(stack):
    from agent.config import from_dict
    from agent.desktop import connected_clients
    from tests.support.desktop import viewer_process

    config = from_dict(stack.agent_config())
    base = connected_clients(config)
    with viewer_process(stack.vnc_port):
        assert connected_clients(config) == base + 1
        assert stack.agent.get("/v1/desktop").json()["connected_clients"] == base + 1
    deadline = time.monotonic() + 5
    while connected_clients(config) != base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connected_clients(config) == base


def test_status_page_shows_the_agents_figures_and_its_button_works(stack):
    url = f"https://127.0.0.1:{stack.https_port}/status/"
    cert = str(stack.root / "tls" / "desktop.crt")
    assert requests.get(url, verify=cert, timeout=5).status_code == 401
    assert requests.get(url, auth=(stack.user, "wrong-pw"), verify=cert, timeout=5).status_code == 401
    truth = {r: stack.agent.get(f"/v1/{r}") for r in ("gpus", "volumes", "prewarm", "idle", "desktop")}

    with browser_context(stack.login) as context:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-loaded='1']", timeout=20000)
        assert stack.agent.token not in page.content()

        gpus = truth["gpus"]
        if gpus.status_code == 404:
            assert page.locator("#gpus [data-state='unavailable']").count() == 1
        else:
            for gpu in gpus.json()["gpus"]:
                row = page.locator(f"#gpus tr[data-gpu-index='{gpu['index']}']")
                assert row.locator(".gpu-name").inner_text() == gpu["name"]
                assert row.locator(".gpu-util").inner_text() == f"{round(gpu['utilization_gpu_pct'])} %"
                used, total = gpu["memory_used_bytes"] / 2**30, gpu["memory_total_bytes"] / 2**30
                assert row.locator(".gpu-mem").inner_text() == f"{used:.1f} / {total:.1f} GiB"
        for route in ("volumes", "prewarm", "idle"):
            if truth[route].status_code == 404:
                assert page.locator(f"#{route} [data-state='unavailable']").count() == 1
        desktop = truth["desktop"].json()
        assert page.locator("#desktop [data-running='true']").inner_text() == "Running"
        assert f":{desktop['display']}" in page.locator("#desktop").inner_text()

        old = server_pid(stack.display)
        log_out_from_the_status_page(page)
        assert server_pid(stack.display) not in (None, old)
        assert rfb_client.connect(stack.vnc_port, stack.password).width == 800


def test_password_rotation(stack):
    old = stack.password
    response = stack.agent.request("POST", "/v1/desktop/password")
    assert response.status_code == 200, response.text
    new = response.json()["password"]
    assert len(new) == 8 and new != old
    assert "vnc" in response.json()["updated"] and "status-page" in response.json()["updated"]
    passwd = stack.home / ".vnc" / "passwd"
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600 and passwd.stat().st_uid == os.getuid()
    assert rfb_client.connect(stack.vnc_port, new).width == 800
    with pytest.raises(rfb_client.VncRefused):
        rfb_client.connect(stack.vnc_port, old)
    status = f"https://127.0.0.1:{stack.https_port}/status/"
    cert = str(stack.root / "tls" / "desktop.crt")  # first boot's certificate names 127.0.0.1
    assert requests.get(status, auth=(stack.user, new), verify=cert, timeout=5).status_code == 200
    assert requests.get(status, auth=(stack.user, old), verify=cert, timeout=5).status_code == 401
    assert new not in (stack.root / "agent" / "agent.log").read_text()


# Last: the failures it causes make Xvnc refuse this address for a few seconds.
def test_wrong_password_is_refused(stack, tmp_path):
    assert rfb_client.connect(stack.vnc_port, stack.password).width == 800
    wrong = "x" + stack.password[1:] if stack.password[0] != "x" else "y" + stack.password[1:]
    with pytest.raises(rfb_client.VncRefused):
        rfb_client.connect(stack.vnc_port, wrong)
    png = screenshot(stack.novnc_url(wrong), tmp_path / "wrong.png", timeout=6, login=stack.login)
    assert colour_fraction(png, SESSION_RGB) < 0.01
    # Xvnc now holds back 127.0.0.1 for a while (its blacklist after failures): a wrong guess costs time.
