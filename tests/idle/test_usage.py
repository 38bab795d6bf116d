"""Usage and cost per protocol: a real pyworkflow protocol running, the GPU through the NVML boundary listing
its run process (and one of this test's processes outside Scipion), real samples on the real clock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent import gpus, idle, scipion_projects, usage
from agent.app import create_app
from agent.config import from_dict
from scipioncloud import costs
from tests.conftest import TOKEN, agent_config_dict
from tests.support import processes, pyworkflow_env
from tests.support.fake_imdsv2 import IDENTITY, FakeImdsV2Server
from tests.support.fake_pynvml import FakeGpu, FakePynvml

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PRICE = 3.6  # $/h: a cent every 10 s, easy to check by eye


def running_protocol(tmp_path, steps: int = 10):
    launched = pyworkflow_env.launch_sleeping_protocols(tmp_path, "cryo-usage", steps)
    project = Path(launched[0]["project"])
    pyworkflow_env.wait_for_status(project, launched[0]["id"], {"running"})
    (protocol,) = scipion_projects.active_protocols([str(pyworkflow_env.projects_dir(tmp_path))])[0]
    return launched, protocol


def test_cost_goes_to_the_protocol_other_work_and_idle_and_adds_up(tmp_path, monkeypatch):
    other = subprocess.Popen(["sleep", "120"])  # a GPU process outside Scipion (a user's own script)
    launched, protocol = running_protocol(tmp_path)
    try:
        gpu = FakeGpu(gpu_util=90, processes=[(protocol.pid, 6 * 2**30), (other.pid, 2**30)])
        gpu.process_util = {protocol.pid: 75, other.pid: 25}
        fake = FakePynvml([gpu])
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        config = agent_config_dict(
            tmp_path,
            idle={"project_dirs": [str(pyworkflow_env.projects_dir(tmp_path))], "cpu_pct": 1000},
            usage={"price_per_hour": PRICE, "interval_s": 1},
        )
        app = create_app(from_dict(config), token=TOKEN)
        meter = usage.meter(app)
        sampler = gpus.sampler(app)
        times = []
        for phase in ("protocol", "idle"):
            for _ in range(6):
                sampler.sample_now()
                meter.sample()
                times.append(meter._last)
                time.sleep(0.3)
            if phase == "protocol":
                pyworkflow_env.kill_runs(launched)
                processes.stop(other)
                gpu.processes, gpu.process_util, gpu.gpu_util = [], {}, 0
        report = app.test_client().get("/v1/usage", headers=AUTH).json
    finally:
        pyworkflow_env.kill_runs(launched)
        processes.stop(other)

    (day,) = report["days"]
    wall = times[-1] - times[0]
    expected = PRICE * wall / 3600
    # every second of wall-clock cost went somewhere, and the sum is what the instance cost
    assert day["wall_s"] == pytest.approx(wall, rel=1e-6)
    assert day["cost_usd"] == pytest.approx(expected, rel=0.01)
    parts = day["attributed_cost_usd"] + day["other_cost_usd"] + day["idle_cost_usd"]
    assert parts == pytest.approx(day["cost_usd"], rel=0.01)
    (project,) = day["projects"]
    assert project["project"] == "cryo-usage"
    (entry,) = project["protocols"]
    assert entry["protocol"] == f"{protocol.id} sleep 10 steps"
    assert sum(p["cost_usd"] for p in project["protocols"]) == pytest.approx(day["attributed_cost_usd"])
    # while it ran: 75 % of the GPU was the protocol's, 25 % someone else's
    assert entry["cost_usd"] == pytest.approx(3 * day["other_cost_usd"], rel=0.01)
    assert entry["gpu_s"] == pytest.approx(0.75 * entry["wall_s"], rel=0.01)
    assert entry["gpu_memory_max_bytes"] == 6 * 2**30
    assert day["idle_s"] > 0 and day["idle_cost_usd"] == pytest.approx(PRICE * day["idle_s"] / 3600)
    assert report["totals"]["cost_usd"] == day["cost_usd"]
    print("one day's usage report:\n" + json.dumps(report, indent=2))


def test_price_from_the_cli_price_table_by_the_instance_type_in_imds(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    with FakeImdsV2Server() as imds:
        config = agent_config_dict(tmp_path, host={"imds_url": imds.url})
        app = create_app(from_dict(config), token=TOKEN)
        from agent import host

        host.sampler(app).identity.fetch()
        report = app.test_client().get("/v1/usage", headers=AUTH).json
    table = costs.load_table()
    expected = table.region(IDENTITY["region"]).instances_per_hour[IDENTITY["instanceType"]]
    assert report["price"]["instance_per_hour"] == expected
    assert report["price"]["source"] == f"price table, {IDENTITY['instanceType']} in {IDENTITY['region']}"


def test_without_a_price_costs_are_unknown_not_zero(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    app = create_app(from_dict(agent_config_dict(tmp_path, usage={"interval_s": 1})), token=TOKEN)
    meter = usage.meter(app)
    meter.sample()
    time.sleep(0.2)
    meter.sample()
    report = meter.report()
    assert (
        report["price"]["instance_per_hour"] is None and "no instance identity" in report["price"]["source"]
    )
    assert report["days"][0]["cost_usd"] is None and report["days"][0]["wall_s"] > 0


def test_route_metrics_and_money_saved_by_stops(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    config = agent_config_dict(tmp_path, usage={"price_per_hour": PRICE})
    stopped_at = psutil.boot_time() - 2 * 3600  # the idle rule stopped the instance 2 h before this boot
    (tmp_path / "state" / idle.STOPS_FILE).write_text(
        json.dumps([{"stopped_at": stopped_at, "action": "stop"}])
    )
    app = create_app(from_dict(config), token=TOKEN)
    client = app.test_client()
    for bad in ("0", "x", "401"):
        answer = client.get(f"/v1/usage?days={bad}", headers=AUTH)
        assert answer.status_code == 400 and "days must be" in answer.json["error"]
    saved = client.get("/v1/usage", headers=AUTH).json["saved_by_stops"]
    assert saved["stops"] == 1 and saved["stopped_s"] == pytest.approx(7200, abs=1)
    assert saved["saved_usd"] == pytest.approx(2 * PRICE, rel=1e-3)
    assert saved["would_have_cost_usd"] == pytest.approx(saved["cost_usd"] + saved["saved_usd"])
    # one protocol's day, as the meter stores it, comes out labelled in /metrics
    key = "cryo\x0012 motioncorr"
    meter = usage.meter(app)
    day = usage._new_day()
    day["protocols"][key] = {"project": "cryo", "protocol": "12 motioncorr", **usage._new_counts()}
    day["protocols"][key].update(wall_s=60.0, gpu_s=30.0, cost_usd=0.06)
    meter.data["days"]["2026-11-30"] = day
    text = client.get("/metrics", headers=AUTH).text
    assert (
        'scipioncloud_usage_protocol_cost_dollars_total{project="cryo",protocol="12 motioncorr"} 0.06' in text
    )
    assert 'scipioncloud_usage_gpu_seconds_total{project="cryo",protocol="12 motioncorr"} 30.0' in text
    (line,) = [x for x in text.splitlines() if x.startswith("scipioncloud_usage_saved_by_stops_dollars ")]
    assert float(line.split()[1]) == pytest.approx(2 * PRICE, rel=1e-3)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_usage_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    config = from_dict(agent_config_dict(tmp_path, usage={"price_per_hour": PRICE}))
    meter = usage.meter(create_app(config, token=TOKEN))
    meter.sample()
    time.sleep(0.2)
    meter.sample()
    before = meter.report()["totals"]["wall_s"]
    again = usage.meter(create_app(config, token=TOKEN))
    again.sample()  # a restart: the time the agent was down is never counted
    assert again.report()["totals"]["wall_s"] == before > 0


def test_cpu_time_of_a_protocols_processes_decides_its_share(tmp_path, monkeypatch):
    """Two protocols without GPU work: a real process burning CPU and one sleeping; the CPU time measured
    from /proc splits the cost."""
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([]))
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        config = agent_config_dict(tmp_path, usage={"price_per_hour": PRICE})
        meter = usage.meter(create_app(from_dict(config), token=TOKEN))
        owners = {burner.pid: ("cryo", "7 relion refine"), sleeper.pid: ("cryo", "8 import movies")}
        monkeypatch.setattr(meter, "_owners", lambda: owners)
        for _ in range(5):
            meter.sample()
            time.sleep(0.4)
        meter.sample()
    finally:
        processes.stop(burner)
        processes.stop(sleeper)
    (day,) = meter.report()["days"]
    by_name = {p["protocol"]: p for p in day["projects"][0]["protocols"]}
    refine, imports = by_name["7 relion refine"], by_name["8 import movies"]
    assert refine["cpu_s"] > 0.3 and imports["cpu_s"] < 0.05
    assert refine["cost_usd"] > 10 * imports["cost_usd"]
    assert refine["wall_s"] == imports["wall_s"] == pytest.approx(day["wall_s"])
    assert refine["cost_usd"] + imports["cost_usd"] == pytest.approx(day["cost_usd"], rel=1e-6)
