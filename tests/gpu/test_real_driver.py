"""Checks against a real NVIDIA driver (`make test-gpu` on a GPU instance). Without one every test here is
skipped with the reason; the same report is faked at the pynvml boundary in tests/agent/test_gpus.py."""

from __future__ import annotations

import csv
import shutil
import subprocess

import pytest

from agent import nvml
from tests.conftest import agent_config_dict, start_agent, stop_agent

pytestmark = pytest.mark.gpu

QUERY = "index,uuid,name,memory.total,driver_version,pci.bus_id"


@pytest.fixture(scope="module")
def smi_gpus() -> list[dict[str, str]]:
    """nvidia-smi's view, or a skip that says what is missing."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi on PATH: no NVIDIA driver here; run `make test-gpu` on a GPU machine")
    sweep = nvml.Reader().sweep()
    if sweep.state != nvml.OK:
        pytest.skip(f"NVML is not usable here ({sweep.state}: {sweep.error})")
    result = subprocess.run(
        ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [[cell.strip() for cell in row] for row in csv.reader(result.stdout.splitlines()) if row]
    return [dict(zip(QUERY.split(","), row, strict=True)) for row in rows]


@pytest.fixture(scope="module")
def agent(tmp_path_factory, smi_gpus):
    tmp = tmp_path_factory.mktemp("gpu-agent")
    process = start_agent(tmp, agent_config_dict(tmp, host={"imds_url": "http://127.0.0.1:9"}))
    yield process
    stop_agent(process)


def test_nvidia_smi_lists_gpus(smi_gpus):
    assert smi_gpus, "nvidia-smi answered but listed no GPU"
    assert all(g["uuid"].startswith("GPU-") for g in smi_gpus)


def test_agent_report_agrees_with_nvidia_smi(agent, smi_gpus):
    body = agent.get("/v1/gpus").json()
    assert body["nvml"]["state"] == "ok", body["nvml"]
    assert body["nvml"]["stale"] is False
    assert body["nvml"]["driver_version"] == smi_gpus[0]["driver_version"]
    assert body["nvml"]["cuda_version"], "CUDA driver version missing"
    by_uuid = {g["uuid"]: g for g in body["gpus"]}
    assert sorted(by_uuid) == sorted(g["uuid"] for g in smi_gpus)
    for smi in smi_gpus:
        ours = by_uuid[smi["uuid"]]
        assert ours["index"] == int(smi["index"])
        assert ours["name"] == smi["name"]
        assert ours["pci_bus_id"].lower() == smi["pci.bus_id"].lower()
        # nvidia-smi prints MiB; newer drivers may leave a few MiB reserved out of one of the two views.
        assert ours["memory_total_bytes"] / 2**20 == pytest.approx(float(smi["memory.total"]), rel=0.01)
        assert 0 <= ours["memory_used_bytes"] <= ours["memory_total_bytes"]
        assert ours["utilization_gpu_pct"] is None or 0 <= ours["utilization_gpu_pct"] <= 100
        assert ours["temperature_c"] is None or 0 < ours["temperature_c"] < 120
        assert ours["power_draw_w"] is None or 0 < ours["power_draw_w"] < 2000
        assert isinstance(ours["processes"], list | None)


def test_metrics_with_a_real_gpu_pass_promtool(agent, smi_gpus):
    text = agent.get("/metrics").text
    for gpu in smi_gpus:
        assert f'uuid="{gpu["uuid"]}"' in text
    assert 'scipioncloud_scrape_collector_success{collector="gpu"} 1.0' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool missing: make deps installs Debian's prometheus")
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
