"""/metrics: Prometheus text from the agent's own registry, checked with promtool and parsed back."""

from __future__ import annotations

import shutil
import subprocess
import sys

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import collectors, gpus, metrics
from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict
from tests.support.fake_pynvml import NVML_ERROR_GPU_IS_LOST, FakeGpu, FakePynvml

AUTH = {"Authorization": f"Bearer {TOKEN}"}
L4 = FakeGpu(uuid="GPU-99999999-8888-7777-6666-555555555555", name="NVIDIA L4", gpu_util=90)


@pytest.fixture
def scrape(tmp_path, monkeypatch):
    def run(fake: FakePynvml, replace: dict | None = None) -> tuple[str, dict]:
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        app = create_app(from_dict(agent_config_dict(tmp_path)), token=TOKEN)
        for name, collect in (replace or {}).items():
            monkeypatch.setitem(collectors.registered(app), name, collect)
        gpus.sampler(app).sample_now()
        response = app.test_client().get("/metrics", headers=AUTH)
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain; version=0.0.4")
        text = response.get_data(as_text=True)
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return text, samples

    return run


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def gpu_labels(index: int, gpu: FakeGpu) -> dict:
    return {"gpu": str(index), "uuid": gpu.uuid, "model": gpu.name}


def promtool_check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def test_gpu_metrics_in_base_units_with_labels(scrape):
    a10g = FakeGpu(processes=[(4242, 2**30)])
    _, samples = scrape(FakePynvml([a10g, L4]))
    first, second = gpu_labels(0, a10g), gpu_labels(1, L4)
    assert value(samples, "scipioncloud_gpu_utilization_ratio", **first) == pytest.approx(0.37)
    assert value(samples, "scipioncloud_gpu_utilization_ratio", **second) == pytest.approx(0.90)
    assert value(samples, "scipioncloud_gpu_memory_used_bytes", **first) == 3 * 2**30
    assert value(samples, "scipioncloud_gpu_memory_total_bytes", **first) == 24 * 2**30
    assert value(samples, "scipioncloud_gpu_power_draw_watts", **first) == 61.5
    assert value(samples, "scipioncloud_gpu_power_limit_watts", **first) == 300
    assert value(samples, "scipioncloud_gpu_sm_clock_hertz", **first) == 1710e6
    assert value(samples, "scipioncloud_gpu_temperature_celsius", **first) == 41
    assert (
        value(samples, "scipioncloud_gpu_process_memory_used_bytes", **first, pid="4242", process="") == 2**30
    )
    info = {**first, "pci_bus_id": a10g.bus_id, "driver_version": "550.90.07", "cuda_version": "12.4"}
    assert value(samples, "scipioncloud_gpu_info", **info) == 1
    assert value(samples, "scipioncloud_nvml_state", state="ok") == 1
    assert value(samples, "scipioncloud_nvml_state", state="gpu-lost") == 0
    for collector in ("gpu", "host", "idle"):
        assert value(samples, "scipioncloud_scrape_collector_success", collector=collector) == 1
        assert value(samples, "scipioncloud_scrape_collector_duration_seconds", collector=collector) >= 0


def test_unsupported_field_is_absent_not_a_sentinel(scrape):
    text, samples = scrape(FakePynvml([FakeGpu(unsupported={"nvmlDeviceGetTemperature"})]))
    assert not any(name == "scipioncloud_gpu_temperature_celsius" for name, _ in samples)
    assert value(samples, "scipioncloud_gpu_power_draw_watts", **gpu_labels(0, FakeGpu())) == 61.5
    assert "4294967295" not in text and "9223372036854775" not in text


def test_host_and_idle_metrics_are_present(scrape):
    _, samples = scrape(FakePynvml([]))
    assert value(samples, "scipioncloud_host_memory_total_bytes") > 0
    assert value(samples, "scipioncloud_host_load_average", window="1m") >= 0
    assert value(samples, "scipioncloud_idle") == 0
    assert value(samples, "scipioncloud_idle_signal_busy", signal="gpu") == 0  # no GPU: nothing to keep busy


def test_lost_gpu_fails_the_gpu_collector_only(scrape):
    _, samples = scrape(FakePynvml([FakeGpu()], init_error=NVML_ERROR_GPU_IS_LOST))
    assert value(samples, "scipioncloud_nvml_state", state="gpu-lost") == 1
    assert value(samples, "scipioncloud_scrape_collector_success", collector="gpu") == 0
    assert value(samples, "scipioncloud_scrape_collector_success", collector="host") == 1


def test_a_collector_that_raises_is_reported_and_the_rest_still_come(scrape, monkeypatch):
    def broken(app):
        raise OSError("/proc unreadable")

    monkeypatch.setattr(metrics.log, "exception", lambda *a, **k: None)
    _, samples = scrape(FakePynvml([FakeGpu()]), replace={"host": broken})
    assert value(samples, "scipioncloud_scrape_collector_success", collector="host") == 0
    assert value(samples, "scipioncloud_scrape_collector_success", collector="gpu") == 1
    assert not any(name.startswith("scipioncloud_host_") for name, _ in samples)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: make deps installs prometheus"
)
@pytest.mark.parametrize("fake", [FakePynvml([FakeGpu(processes=[(1, 2**20)]), L4]), FakePynvml([])])
def test_promtool_accepts_the_output(scrape, fake):
    text, _ = scrape(fake)
    result = promtool_check(text)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_own_registry_leaves_the_global_one_alone(scrape):
    scrape(FakePynvml([FakeGpu()]))
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("scipioncloud_") for name in names)


def test_metrics_needs_the_token(tmp_path):
    app = create_app(from_dict(agent_config_dict(tmp_path)), token=TOKEN)
    assert app.test_client().get("/metrics").status_code == 401


def test_each_capability_registers_its_own_collector(tmp_path):
    """As node_exporter's registerCollector: the capability module that owns the figures registers them;
    /metrics knows none of them by name."""
    app = create_app(from_dict(agent_config_dict(tmp_path)), token=TOKEN)
    owners = {name: collect.__module__ for name, collect in collectors.registered(app).items()}
    assert owners == {
        "gpu": "agent.gpus",
        "host": "agent.host",
        "idle": "agent.idle",
        "prewarm": "agent.volumes",
        "usage": "agent.usage",
        "data": "agent.data",
    }
    with pytest.raises(ValueError, match="already registered"):
        collectors.register(app, "gpu", lambda app: (iter([]), True))
