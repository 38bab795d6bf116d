"""The real agent process: /metrics through promtool, /v1/gpus with the real pynvml on this GPU-less
machine, /v1/host with real figures and the EC2 identity from the IMDSv2 stand-in, the idle action."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import psutil
import pytest
import requests

from tests.conftest import agent_config_dict, start_agent, stop_agent
from tests.support.fake_imdsv2 import IDENTITY, FakeImdsV2Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reporting_agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reporting-agent")
    with FakeImdsV2Server() as imds:
        config = agent_config_dict(
            tmp,
            host={"imds_url": imds.url, "interval_s": 0.5},
            gpu={"interval_s": 0.5},
        )
        agent = start_agent(tmp, config)
        try:
            yield agent
        finally:
            stop_agent(agent)


def test_metrics_pass_promtool(reporting_agent):
    response = reporting_agent.get("/metrics")
    assert response.status_code == 200
    assert 'scipioncloud_scrape_collector_success{collector="gpu"}' in response.text
    if shutil.which("promtool") is None:
        pytest.skip("promtool missing: make deps installs Debian's prometheus")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=response.text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_metrics_need_the_token(reporting_agent):
    assert requests.get(reporting_agent.url + "/metrics", timeout=5).status_code == 401


def test_gpus_without_a_driver_say_why(reporting_agent):
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver: make test-gpu checks it")
    body = reporting_agent.get("/v1/gpus").json()
    assert body["nvml"]["state"] in ("library-not-found", "no-driver")
    assert body["nvml"]["error"] and body["gpus"] == []
    assert body["nvml"]["stale"] is False and body["nvml"]["sample_age_s"] < 5


def test_host_reports_this_machine_and_the_instance_identity(reporting_agent):
    deadline = time.monotonic() + 5
    body = reporting_agent.get("/v1/host").json()
    while (
        body["instance"] is None or body["cpu"]["utilization_pct"] is None
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
        body = reporting_agent.get("/v1/host").json()
    assert body["instance"]["instance_id"] == IDENTITY["instanceId"]
    assert body["instance"]["availability_zone"] == IDENTITY["availabilityZone"]
    assert body["cpu"]["count"] == psutil.cpu_count()
    assert 0 <= body["cpu"]["utilization_pct"] <= 100
    assert body["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert any(d["mountpoint"] == "/" and d["size_bytes"] > 0 for d in body["disks"])
    assert body["uptime_s"] > 0


def test_idle_route_over_http(reporting_agent):
    body = reporting_agent.get("/v1/idle").json()
    assert {s["name"] for s in body["signals"]} == {
        "gpu",
        "cpu",
        "scipion",
        "slurm",
        "agent_jobs",
        "ssh",
        "desktop_input",
    }
    assert body["window_s"] == 30 * 60 and body["idle"] is False


def test_agent_runs_the_poweroff_command_after_window_and_grace(tmp_path):
    marker = tmp_path / "powered-off"
    config = agent_config_dict(
        tmp_path,
        host={"imds_url": "http://127.0.0.1:9", "interval_s": 0.1},
        idle={
            "cpu_pct": 1000,  # CPU never keeps this machine busy, whatever else runs here
            "window_min": 0.01,
            "grace_min": 0.01,
            "check_interval_s": 0.1,
            "action": "poweroff",
            "poweroff_command": f"touch {marker}",
        },
    )
    agent = start_agent(tmp_path, config)
    try:
        deadline = time.monotonic() + 15
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists()
        body = agent.get("/v1/idle").json()
        assert body["idle"] is True and body["action"]["result"] == "exit 0"
        # The exact timing is tested on a fake clock (tests/idle/test_idle.py); here, order only.
        assert body["quiet_since"] <= body["action"]["due_at"] <= body["action"]["ran_at"]
    finally:
        stop_agent(agent)
    assert "running ['touch'" in (tmp_path / "agent.log").read_text()
