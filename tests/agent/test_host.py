"""/v1/host: real psutil figures, and the EC2 identity through an IMDSv2 stand-in on 127.0.0.1."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from agent import host, services
from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict
from tests.support.fake_imdsv2 import IDENTITY, FakeImdsV2Server, SilentServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(tmp_path, imds_url: str, **host_config):
    config = agent_config_dict(tmp_path, host={"imds_url": imds_url, "imds_timeout_s": 0.3, **host_config})
    return create_app(from_dict(config), token=TOKEN)


def test_identity_comes_through_the_imdsv2_token_flow(tmp_path):
    with FakeImdsV2Server() as imds:
        app = make_app(tmp_path, imds.url)
        sampler = host.sampler(app)
        sampler.identity.fetch()
        body = app.test_client().get("/v1/host", headers=AUTH).json
    assert body["instance"] == {
        "instance_id": IDENTITY["instanceId"],
        "instance_type": "g5.xlarge",
        "region": "eu-west-1",
        "availability_zone": "eu-west-1b",
        "image_id": IDENTITY["imageId"],
    }
    assert body["instance_lookup"] == {"state": "found", "error": None}
    assert [(m, p) for m, p, _ in imds.requests] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/dynamic/instance-identity/document"),
    ]


def test_the_stand_in_refuses_imdsv1_style_requests(tmp_path):
    """Guards the stand-in itself: a client that skipped the token PUT must fail against it."""
    import urllib.error
    import urllib.request

    with FakeImdsV2Server() as imds:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(imds.url + "/latest/dynamic/instance-identity/document", timeout=2)
        caught.value.close()
    assert caught.value.code == 401


def test_off_ec2_the_identity_is_null_and_never_slows_a_request(tmp_path):
    with SilentServer() as silent:
        app = make_app(tmp_path, silent.url)
        services.start_all(app)
        try:
            client = app.test_client()
            started = time.monotonic()
            body = client.get("/v1/host", headers=AUTH).json
            assert time.monotonic() - started < 0.25
            assert body["instance"] is None and body["instance_lookup"]["state"] == "pending"
            host.sampler(app).identity.wait(5)
            body = client.get("/v1/host", headers=AUTH).json
            assert body["instance"] is None
            assert body["instance_lookup"]["state"] == "unavailable"
            assert "timed out" in body["instance_lookup"]["error"]
        finally:
            services.stop_all(app)


def test_non_http_imds_url_is_refused(tmp_path):
    with pytest.raises(ValueError, match="http"):
        make_app(tmp_path, "file:///etc/passwd")


def test_host_figures_are_this_machines(tmp_path):
    app = make_app(tmp_path, "http://127.0.0.1:9")
    meter = host.sampler(app).meter
    busy_until = time.monotonic() + 0.3
    while time.monotonic() < busy_until:  # make some CPU time to measure
        pass
    meter.sample()
    body = app.test_client().get("/v1/host", headers=AUTH).json
    cpu = body["cpu"]
    assert cpu["count"] == psutil.cpu_count()
    assert len(cpu["per_core_pct"]) == psutil.cpu_count()
    assert 0 < cpu["utilization_pct"] <= 100  # this test kept one core busy
    assert all(0 <= pct <= 100 for pct in cpu["per_core_pct"])
    assert body["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert 0 < body["memory"]["available_bytes"] <= body["memory"]["total_bytes"]
    assert body["load"]["1m"] == pytest.approx(os.getloadavg()[0], abs=2)
    root = next(d for d in body["disks"] if d["mountpoint"] == "/")
    assert root["size_bytes"] > 0 and root["used_bytes"] + root["free_bytes"] <= root["size_bytes"]
    assert "lo" in {n["interface"] for n in body["network"]}
    assert 0 < body["uptime_s"] == pytest.approx(time.time() - psutil.boot_time(), abs=5)


def test_cpu_meter_counts_busy_time(tmp_path):
    meter = host.CpuMeter()
    time.sleep(0.2)
    meter.sample()
    quiet = meter.total_pct
    busy_until = time.monotonic() + 0.5
    while time.monotonic() < busy_until:
        pass
    meter.sample()
    # One busy core out of N: at least (100/N)% minus other processes' noise.
    assert meter.total_pct >= 100 / psutil.cpu_count() * 0.8, (quiet, meter.total_pct)
    assert sum(meter.per_core_pct) >= 80  # the thread may move between cores


def test_the_volume_status_lookup_asks_the_configured_imds(tmp_path, monkeypatch):
    """The region lookup for AWS's volume status goes to host.imds_url, as every IMDS call does."""
    from agent import aws_volumes
    from agent.app import create_app
    from agent.config import from_dict
    from agent.volumes import EXTENSION

    asked = []
    monkeypatch.setattr(aws_volumes, "ec2_client", lambda timeout, imds_url: asked.append(imds_url))
    config = from_dict(agent_config_dict(tmp_path, host={"imds_url": "http://127.0.0.1:9"}))
    app = create_app(config, token="t" * 20)
    assert app.extensions[EXTENSION].aws_status("vol-0123456789abcdef0") is None
    assert asked == ["http://127.0.0.1:9"]
