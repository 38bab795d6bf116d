"""The one IMDS client's boot-time wait (agent/imds.py) and `scipioncloud-agent userdata --wait`, the command
the first-boot hook runs: against the IMDSv2 stand-in started late (waited for), never reachable (a clear
failure, non-zero, in bounded time) and at the address the config names. The command runs as the installed
console script, as the hook runs it."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from agent import imds, userdata
from agent.config import load as load_agent_config
from tests.support.fake_imdsv2 import FakeImdsV2Server, SilentServer, answering_after
from tests.support.paths import VENV_BIN, free_port

AGENT = str(VENV_BIN / "scipioncloud-agent")
USER_DATA = userdata.render({"idle": {"action": "poweroff", "window_min": 45}}).encode()


def run_userdata(config, *args: str, on_ec2: str = "1", timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SCIPIONCLOUD_IMDS_URL", imds.ON_EC2_ENV)}
    env[imds.ON_EC2_ENV] = on_ec2
    return subprocess.run(
        [AGENT, "userdata", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_waits_for_a_metadata_service_that_comes_up_late(tmp_path):
    """The network comes up 3 s after the command starts: the port listens but nobody answers until then."""
    config = tmp_path / "agent.toml"
    server = FakeImdsV2Server(user_data=USER_DATA)
    config.write_text(f'[host]\nimds_url = "{server.url}"\n')  # the configured address, no override
    with answering_after(server, 3):
        done = run_userdata(config, "--wait", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"instance metadata service reachable at {server.url}" in done.stdout
    assert ("PUT", "/latest/api/token", 200) in server.requests
    assert ("GET", "/latest/user-data", 200) in server.requests
    loaded = load_agent_config(config)
    assert loaded.idle.action == "poweroff" and loaded.idle.window_min == 45


def test_an_unreachable_metadata_service_fails_clearly_within_the_wait(tmp_path):
    config = tmp_path / "agent.toml"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused at once, retried
    config.write_text(f'[host]\nimds_url = "{url}"\n')
    before = config.read_text()
    started = time.monotonic()
    failed = run_userdata(config, "--wait", "4")
    took = time.monotonic() - started
    assert failed.returncode == 1
    assert f"the instance metadata service at {url} did not answer within 4 s" in failed.stderr
    assert "launch settings are NOT applied" in failed.stderr
    assert 3.5 <= took < 20  # it retried for the whole wait, and no longer than a bounded time after
    assert config.read_text() == before


def test_a_silent_metadata_service_cannot_stretch_the_wait(tmp_path):
    """A port that accepts and never answers: each try is cut to what is left of the wait."""
    config = tmp_path / "agent.toml"
    with SilentServer() as silent:
        config.write_text(f'[host]\nimds_url = "{silent.url}"\n')
        started = time.monotonic()
        failed = run_userdata(config, "--wait", "3")
        took = time.monotonic() - started
    assert failed.returncode == 1 and "did not answer within 3 s" in failed.stderr
    assert took < 15


def test_off_ec2_the_command_asks_once_and_changes_nothing(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'[host]\nimds_url = "http://127.0.0.1:{free_port()}"\n')
    started = time.monotonic()
    done = run_userdata(config, "--wait", "30", on_ec2="0")
    assert done.returncode == 0 and "no instance metadata service" in done.stdout
    assert time.monotonic() - started < 15  # no 30 s wait off EC2


def test_the_override_wins_over_the_configured_address(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'[host]\nimds_url = "http://127.0.0.1:{free_port()}"\n')
    with FakeImdsV2Server(user_data=USER_DATA) as server:
        done = run_userdata(config, "--wait", "10", "--imds-url", server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert load_agent_config(config).idle.window_min == 45


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_backs_off_and_stops_at_the_deadline():
    clock = FakeClock()
    client = imds.ImdsClient(f"http://127.0.0.1:{free_port()}")
    tries = []

    def ask(c):
        tries.append(c.timeout_s)
        clock.now += 0.1  # a refused connection costs a little time
        raise imds.ImdsUnavailable("refused")

    failure = r"did not answer within 20 s \(\d+ tries; last: refused\)"
    with pytest.raises(imds.ImdsUnavailable, match=failure):
        imds.wait_for(ask, client, 20, clock=clock, sleep=clock.sleep)
    assert clock.sleeps[:5] == [0.5, 1.0, 2.0, 4.0, 5.0]  # doubling, capped
    assert clock.now == pytest.approx(20.0, abs=0.2)  # never past the deadline by more than a try


def test_wait_for_returns_the_first_answer():
    clock = FakeClock()
    answers = iter([imds.ImdsUnavailable("down"), imds.ImdsUnavailable("down"), "token"])

    def ask(c):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = imds.ImdsClient(f"http://127.0.0.1:{free_port()}")  # never asked: `ask` answers
    assert imds.wait_for(ask, client, 60, clock=clock, sleep=clock.sleep) == "token"
    assert clock.sleeps == [0.5, 1.0]


def test_on_ec2_reads_what_the_hypervisor_says(tmp_path, monkeypatch):
    monkeypatch.delenv(imds.ON_EC2_ENV, raising=False)
    assert not imds.on_ec2(tmp_path)  # no such files: not EC2
    (tmp_path / "class/dmi/id").mkdir(parents=True)
    (tmp_path / "class/dmi/id/sys_vendor").write_text("QEMU\n")
    assert not imds.on_ec2(tmp_path)
    (tmp_path / "class/dmi/id/sys_vendor").write_text("Amazon EC2\n")  # Nitro
    assert imds.on_ec2(tmp_path)
    (tmp_path / "class/dmi/id/sys_vendor").write_text("Xen\n")
    (tmp_path / "hypervisor").mkdir()
    (tmp_path / "hypervisor/uuid").write_text("ec2e1916-9099-7caf-fd21-012345abcdef\n")  # Xen on EC2
    assert imds.on_ec2(tmp_path)
    monkeypatch.setenv(imds.ON_EC2_ENV, "0")
    assert not imds.on_ec2(tmp_path)
