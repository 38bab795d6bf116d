"""fake_pynvml: a stand-in for the `pynvml` module (nvidia-ml-py), for machines without an NVIDIA GPU.

It offers the functions agent/nvml.py calls, with the same names, argument order, units (milliwatts, MHz,
bytes) and error numbers as nvml.h, so the agent's wrapper runs unchanged. Substitute it with
`monkeypatch.setitem(sys.modules, "pynvml", FakePynvml(...))`. Faults are injected per GPU and per call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_UNKNOWN = 999

_MESSAGES = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires reset",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Same shape as pynvml.NVMLError: `.value` holds the nvml.h return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML error {self.value}")


@dataclass
class FakeGpu:
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    name: str = "NVIDIA A10G"
    bus_id: str = "00000000:00:1E.0"
    gpu_util: int = 37
    mem_util: int = 12
    memory_used: int = 3 * 2**30
    memory_total: int = 24 * 2**30
    temperature: int = 41
    power_mw: int = 61_500
    power_limit_mw: int = 300_000
    sm_clock: int = 1710
    mem_clock: int = 6251
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes or None)
    process_util: dict[int, int] = field(default_factory=dict)  # pid -> SM utilisation % of its samples
    unsupported: set[str] = field(default_factory=set)  # pynvml function names that raise NotSupported
    lost: bool = False  # every call on this GPU raises GpuIsLost
    events: deque = field(default_factory=deque)


class FakePynvml:
    """An object that quacks like the pynvml module."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        driver: str = "550.90.07",
        cuda: int = 12040,
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.driver = driver
        self.cuda = cuda
        self.hang: threading.Event | None = None  # when set to an unset Event, every call waits on it
        self.calls = 0
        self.initialised = False
        self.freed_event_sets = 0

    def __getattr__(self, name: str):
        raise AttributeError(f"fake_pynvml has no {name}")

    # -- helpers -------------------------------------------------------------------------------------
    def hang_until_released(self) -> threading.Event:
        self.hang = threading.Event()
        return self.hang

    def _enter(self) -> None:
        self.calls += 1
        if self.hang is not None:
            self.hang.wait(30)

    def _gpu(self, handle: FakeGpu, function: str) -> FakeGpu:
        self._enter()
        if not self.initialised:
            raise NVMLError(1)
        if handle.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if function in handle.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle

    def inject_xid(self, index: int, xid: int) -> None:
        self.gpus[index].events.append(xid)

    # -- the pynvml API the agent uses ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter()
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter()
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter()
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._enter()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._enter()
        if self.gpus[index].lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu):
        return SimpleNamespace(busId=self._gpu(handle, "nvmlDeviceGetPciInfo").bus_id)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu):
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.gpu_util, memory=gpu.mem_util)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu):
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(
            used=gpu.memory_used, total=gpu.memory_total, free=gpu.memory_total - gpu.memory_used
        )

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, clock: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return {self.NVML_CLOCK_SM: gpu.sm_clock, self.NVML_CLOCK_MEM: gpu.mem_clock}[clock]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu):
        gpu = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeGpu):
        self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return []

    def nvmlDeviceGetProcessUtilization(self, handle: FakeGpu, timeStamp: int):
        """nvml.h: samples newer than timeStamp (us) as nvmlProcessUtilizationSample_t; NVML_ERROR_NOT_FOUND
        (6) when there is none."""
        gpu = self._gpu(handle, "nvmlDeviceGetProcessUtilization")
        now_us = int(time.time() * 1e6)
        if not gpu.process_util or now_us <= timeStamp:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return [
            SimpleNamespace(pid=pid, timeStamp=now_us, smUtil=util, memUtil=0, encUtil=0, decUtil=0)
            for pid, util in gpu.process_util.items()
        ]

    def nvmlEventSetCreate(self):
        self._enter()
        return SimpleNamespace(gpus=[])

    def nvmlEventSetFree(self, event_set) -> None:
        self.freed_event_sets += 1
        event_set.gpus.clear()

    def nvmlDeviceRegisterEvents(self, handle: FakeGpu, types: int, event_set) -> None:
        self._gpu(handle, "nvmlDeviceRegisterEvents")
        assert types & self.nvmlEventTypeXidCriticalError
        event_set.gpus.append(handle)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms: int):
        self._enter()
        for gpu in event_set.gpus:
            if gpu.events:
                return SimpleNamespace(device=gpu, eventType=0x8, eventData=gpu.events.popleft())
        raise NVMLError(NVML_ERROR_TIMEOUT)
