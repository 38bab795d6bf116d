"""/v1/gpus with NVML replaced at the `pynvml` module boundary by fake_pynvml."""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path

import pytest

from agent import gpus, nvml, services
from agent.app import create_app
from agent.config import from_dict
from tests.conftest import TOKEN, agent_config_dict
from tests.support.fake_pynvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_RESET_REQUIRED,
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakePynvml,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
A10G = FakeGpu()
L4 = FakeGpu(uuid="GPU-99999999-8888-7777-6666-555555555555", name="NVIDIA L4", bus_id="00000000:00:1F.0")


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """An agent app whose NVML wrapper imports the given fake as `pynvml`."""

    def make(fake: FakePynvml, **gpu_config):
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        app = create_app(from_dict(agent_config_dict(tmp_path, gpu=gpu_config)), token=TOKEN)
        return app

    return make


def sample(app) -> dict:
    gpus.sampler(app).sample_now()
    response = app.test_client().get("/v1/gpus", headers=AUTH)
    assert response.status_code == 200
    return response.json


def test_one_gpu_reports_every_field_in_its_unit(make_app):
    fake = FakePynvml([FakeGpu(processes=[(os.getpid(), 512 * 2**20)])])
    body = sample(make_app(fake))
    assert body["nvml"]["state"] == "ok" and body["nvml"]["error"] is None
    assert body["nvml"]["driver_version"] == "550.90.07"
    assert body["nvml"]["cuda_version"] == "12.4"
    assert body["nvml"]["stale"] is False and 0 <= body["nvml"]["sample_age_s"] < 5
    [gpu] = body["gpus"]
    assert gpu == {
        "index": 0,
        "uuid": A10G.uuid,
        "name": "NVIDIA A10G",
        "pci_bus_id": "00000000:00:1E.0",
        "utilization_gpu_pct": 37,
        "utilization_memory_pct": 12,
        "memory_used_bytes": 3 * 2**30,
        "memory_total_bytes": 24 * 2**30,
        "temperature_c": 41,
        "power_draw_w": 61.5,
        "power_limit_w": 300.0,
        "sm_clock_mhz": 1710,
        "memory_clock_mhz": 6251,
        "processes": [
            {
                "pid": os.getpid(),
                "name": Path(f"/proc/{os.getpid()}/comm").read_text().strip(),
                "user": getpass.getuser(),
                "memory_used_bytes": 512 * 2**20,
                "compute": True,
            }
        ],
        "process_sm_util_pct": {},  # no process sample since the last sweep (NVML_ERROR_NOT_FOUND)
        "last_xid": None,
    }


def test_two_gpus_keep_their_order_and_identity(make_app):
    body = sample(make_app(FakePynvml([A10G, L4])))
    assert [(g["index"], g["uuid"], g["name"]) for g in body["gpus"]] == [
        (0, A10G.uuid, "NVIDIA A10G"),
        (1, L4.uuid, "NVIDIA L4"),
    ]
    assert body["gpus"][1]["pci_bus_id"] == "00000000:00:1F.0"


def test_zero_gpus_is_ok_with_an_empty_list(make_app):
    body = sample(make_app(FakePynvml([])))
    assert body["nvml"]["state"] == "ok"
    assert body["gpus"] == []


@pytest.mark.parametrize(
    ("function", "fields"),
    [
        ("nvmlDeviceGetTemperature", ["temperature_c"]),
        ("nvmlDeviceGetPowerUsage", ["power_draw_w"]),
        ("nvmlDeviceGetEnforcedPowerLimit", ["power_limit_w"]),
        ("nvmlDeviceGetUtilizationRates", ["utilization_gpu_pct", "utilization_memory_pct"]),
        ("nvmlDeviceGetClockInfo", ["sm_clock_mhz", "memory_clock_mhz"]),
        ("nvmlDeviceGetMemoryInfo", ["memory_used_bytes", "memory_total_bytes"]),
        ("nvmlDeviceGetPciInfo", ["pci_bus_id"]),
        ("nvmlDeviceGetName", ["name"]),
    ],
)
def test_unsupported_field_is_null_and_the_rest_stays(make_app, function, fields):
    full = sample(make_app(FakePynvml([FakeGpu()])))["gpus"][0]
    body = sample(make_app(FakePynvml([FakeGpu(unsupported={function})])))
    assert body["nvml"]["state"] == "ok"
    [gpu] = body["gpus"]
    for key, value in gpu.items():
        assert value == (None if key in fields else full[key]), key


def test_processes_null_when_unsupported_and_memory_null_when_not_available(make_app):
    unsupported = {"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"}
    assert sample(make_app(FakePynvml([FakeGpu(unsupported=unsupported)])))["gpus"][0]["processes"] is None
    gone_pid = 2**22 + 17  # above pid_max's default: no such process
    body = sample(make_app(FakePynvml([FakeGpu(processes=[(gone_pid, None)])])))
    assert body["gpus"][0]["processes"] == [
        {"pid": gone_pid, "name": None, "user": None, "memory_used_bytes": None, "compute": True}
    ]


def test_sentinel_numbers_never_leak(make_app):
    body = sample(make_app(FakePynvml([FakeGpu(temperature=0xFFFFFFFF, sm_clock=0xFFFFFFFF)])))
    gpu = body["gpus"][0]
    assert gpu["temperature_c"] is None and gpu["sm_clock_mhz"] is None
    assert gpu["memory_clock_mhz"] == 6251


@pytest.mark.parametrize(
    ("code", "state", "hint"),
    [
        (NVML_ERROR_DRIVER_NOT_LOADED, "no-driver", "kernel module is not loaded"),
        (NVML_ERROR_LIBRARY_NOT_FOUND, "library-not-found", "libnvidia-ml.so"),
        (NVML_ERROR_GPU_IS_LOST, "gpu-lost", "reboot needed"),
        (NVML_ERROR_RESET_REQUIRED, "gpu-lost", "reboot needed"),
        (NVML_ERROR_UNKNOWN, "error", "Unknown Error"),
    ],
)
def test_init_errors_map_to_states(make_app, code, state, hint):
    body = sample(make_app(FakePynvml([A10G], init_error=code)))
    assert body["nvml"]["state"] == state
    assert hint in body["nvml"]["error"]
    assert body["gpus"] == []
    assert body["nvml"]["driver_version"] is None


def test_gpu_lost_during_sweep_turns_the_report_to_gpu_lost(make_app):
    fake = FakePynvml([A10G, FakeGpu(uuid="GPU-lost", lost=False)])
    app = make_app(fake)
    assert sample(app)["nvml"]["state"] == "ok"
    fake.gpus[1].lost = True
    body = sample(app)
    assert body["nvml"]["state"] == "gpu-lost"
    assert "reboot needed" in body["nvml"]["error"]
    assert fake.initialised is False  # shut down, re-initialised on the next sweep
    assert fake.freed_event_sets == 2  # both GPUs' Xid event sets, made by the first sweep
    fake.gpus[1].lost = False
    assert sample(app)["nvml"]["state"] == "ok"


def test_driver_that_comes_back_is_picked_up(make_app):
    fake = FakePynvml([A10G], init_error=NVML_ERROR_DRIVER_NOT_LOADED)
    app = make_app(fake)
    assert sample(app)["nvml"]["state"] == "no-driver"
    fake.init_error = None
    body = sample(app)
    assert body["nvml"]["state"] == "ok" and len(body["gpus"]) == 1


def test_last_critical_xid_is_kept_with_its_time(make_app):
    fake = FakePynvml([A10G, L4])
    app = make_app(fake)
    assert sample(app)["gpus"][1]["last_xid"] is None
    fake.inject_xid(1, 48)
    fake.inject_xid(1, 79)
    before = time.time()
    body = sample(app)
    assert body["gpus"][0]["last_xid"] is None
    xid = body["gpus"][1]["last_xid"]
    assert xid["xid"] == 79
    assert xid["time"].endswith("Z") and xid["time"][:16] <= gpus.iso(time.time())[:16]
    assert gpus.iso(before)[:16] <= xid["time"][:16]
    assert sample(app)["gpus"][1]["last_xid"]["xid"] == 79  # remembered after the queue is drained


def test_hung_nvml_call_does_not_block_the_request(make_app):
    fake = FakePynvml([A10G])
    app = make_app(fake, interval_s=0.05, call_timeout_s=0.2)
    services.start_all(app)
    release = None
    try:
        client = app.test_client()
        assert client.get("/v1/gpus", headers=AUTH).json["nvml"]["stale"] is False
        release = fake.hang_until_released()
        time.sleep(0.6)
        started = time.monotonic()
        body = client.get("/v1/gpus", headers=AUTH).json
        assert time.monotonic() - started < 0.2
        assert body["nvml"]["stale"] is True
        assert "has not returned" in body["nvml"]["stale_reason"]
        assert body["nvml"]["sample_age_s"] >= 0.3
        assert body["gpus"][0]["uuid"] == A10G.uuid  # the last good sample is still shown
        release.set()
        deadline = time.monotonic() + 5
        while client.get("/v1/gpus", headers=AUTH).json["nvml"]["stale"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v1/gpus", headers=AUTH).json["nvml"]["stale"] is False
    finally:
        if release is not None:
            release.set()
        services.stop_all(app)


def test_first_request_before_any_sample_is_stale_not_an_error_page(make_app):
    app = make_app(FakePynvml([A10G]))
    body = app.test_client().get("/v1/gpus", headers=AUTH).json
    assert body["nvml"]["stale"] is True and body["nvml"]["sample_age_s"] is None
    assert body["nvml"]["state"] == "error" and "no NVML sample yet" in body["nvml"]["error"]


def test_missing_pynvml_module_is_library_not_found(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    sweep = nvml.Reader().sweep()
    assert sweep.state == "library-not-found" and "pynvml" in sweep.error


def test_real_pynvml_without_a_driver_reports_library_not_found_or_no_driver():
    pytest.importorskip("pynvml")
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver; tests/gpu covers it")
    sweep = nvml.Reader().sweep()
    assert sweep.state in ("library-not-found", "no-driver"), sweep.error


def test_gpus_needs_the_token(make_app):
    assert make_app(FakePynvml([])).test_client().get("/v1/gpus").status_code == 401
