"""The user data format, the console desktop line and its waiter, durations and addresses."""

from __future__ import annotations

import http.server
import threading

import pytest

from scipioncloud import console, network, userdata
from scipioncloud.commands.common import parse_minutes
from scipioncloud.errors import BadInput


def test_user_data_round_trip():
    text = userdata.render({"idle": {"action": "poweroff", "window_min": 60.0, "grace_min": 10.0}})
    assert text.splitlines()[0] == "#scipioncloud-agent v1"
    assert userdata.parse(text) == {"idle": {"action": "poweroff", "window_min": 60.0, "grace_min": 10.0}}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"server": {"bind": "0.0.0.0:9777"}}, r"\[server\] may not be set"),
        ({"storage": {"fstab": "/tmp/x"}}, "storage.fstab may not be set"),
        ({"idle": {"action": "reboot"}}, "expected one of none, poweroff"),
        ({"idle": {"windw_min": 3}}, "unknown key idle.windw_min"),
    ],
)
def test_user_data_refuses_what_it_must_not_set(settings, message):
    with pytest.raises(userdata.UserDataError, match=message):
        userdata.render(settings)
    with pytest.raises(userdata.UserDataError, match=message):
        userdata.parse(userdata.MARKER + "\n" + userdata.to_toml(settings))


def test_console_line_parsing():
    assert console.parse("boot...\nnothing here\n") is None
    assert console.parse(None) is None
    text = (
        "[    3.1] kernel\n"
        "[   40.2] firstboot[611]: SCIPIONCLOUD-DESKTOP url=https://1.2.3.4/ password=first\n"
        "SCIPIONCLOUD-DESKTOP url=https://ec2-1-2-3-4.compute.amazonaws.com/vnc.html password=Zx9_-+/=\n"
    )
    found = console.parse(text)
    assert found == console.Desktop("https://ec2-1-2-3-4.compute.amazonaws.com/vnc.html", "Zx9_-+/=")
    assert console.parse("SCIPIONCLOUD-DESKTOP url=ftp://x password=y") is None


def test_wait_for_desktop_polls_until_the_line_appears():
    outputs = iter(["", "booting", "x\nSCIPIONCLOUD-DESKTOP url=https://h/ password=p\n"])
    now = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    found = console.wait_for_desktop(
        lambda: next(outputs), timeout_s=100, interval_s=15, clock=lambda: now[0], sleep=sleep
    )
    assert found == console.Desktop("https://h/", "p")
    assert sleeps == [15, 15]


def test_wait_for_desktop_gives_up_at_the_timeout():
    now = [0.0]
    reads = []

    def sleep(s):
        now[0] += s

    def read():
        reads.append(now[0])
        return "still booting"

    assert (
        console.wait_for_desktop(read, timeout_s=40, interval_s=15, clock=lambda: now[0], sleep=sleep) is None
    )
    assert reads == [0, 15, 30, 40]


@pytest.mark.parametrize(
    ("text", "minutes"), [("60m", 60), ("90", 90), ("2h", 120), ("1.5h", 90), ("1d", 1440)]
)
def test_durations(text, minutes):
    assert parse_minutes(text) == minutes


def test_bad_duration():
    with pytest.raises(BadInput, match="60m, 2h"):
        parse_minutes("soon")


def test_cidr_normalization():
    assert network.normalize_cidr("203.0.113.7") == "203.0.113.7/32"
    assert network.normalize_cidr("10.1.2.3/16") == "10.1.0.0/16"
    for bad in ("0.0.0.0/0", "not-an-address", "2001:db8::/64"):
        with pytest.raises(BadInput):
            network.normalize_cidr(bad)


class _CheckIp(http.server.BaseHTTPRequestHandler):
    body = b"198.51.100.23\n"

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def checkip_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _CheckIp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()


def test_caller_cidr_from_a_check_ip_service(checkip_server):
    assert network.caller_cidr(checkip_server) == "198.51.100.23/32"


def test_caller_cidr_failure_asks_for_cidr():
    from tests.conftest import free_port

    with pytest.raises(BadInput, match="pass --cidr"):
        network.caller_cidr(f"http://127.0.0.1:{free_port()}/", timeout_s=1)
