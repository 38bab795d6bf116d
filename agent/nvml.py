"""NVML behind one small interface: a sweep that reads every GPU, and the mapping of NVML errors to states.

The `pynvml` module (nvidia-ml-py) is imported by name at the moment of use, so tests substitute a
`fake_pynvml` module at that boundary. Fields a GPU does not support come back as None (NotSupported), never
as sentinel numbers. A sweep may hang inside the driver; `agent.gpus` runs it off the request path and
reports the sample as stale instead of waiting.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger(__name__)

# States of the `nvml` block in /v1/gpus.
OK, NO_DRIVER, LIBRARY_NOT_FOUND, GPU_LOST, ERROR = (
    "ok",
    "no-driver",
    "library-not-found",
    "gpu-lost",
    "error",
)
STATES = (OK, NO_DRIVER, LIBRARY_NOT_FOUND, GPU_LOST, ERROR)

# NVML return codes (nvml.h); the fake and the real module use the same numbers.
NOT_SUPPORTED, NO_PERMISSION, DRIVER_NOT_LOADED, TIMEOUT = 3, 4, 9, 10
LIBRARY_NOT_FOUND_CODE, FUNCTION_NOT_FOUND, GPU_IS_LOST, RESET_REQUIRED, LIB_RM_MISMATCH = 12, 13, 15, 16, 18
XID_CRITICAL_EVENT = 0x8  # nvmlEventTypeXidCriticalError

# Values some drivers hand back for "no data" instead of an error.
NOT_FOUND = 6  # nvmlDeviceGetProcessUtilization: no process sample since the timestamp asked for
_SENTINELS = {0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF}


class GpuLost(Exception):
    """A GPU fell off the bus or needs a reset; the whole report turns to gpu-lost."""


def load_library() -> Any:
    """The pynvml module (or the fake a test put in sys.modules under that name)."""
    return importlib.import_module("pynvml")


def classify(exc: BaseException) -> tuple[str, str]:
    """NVML error -> (state, message with what to do), as dcgm-exporter and nvidia_gpu_exporter read them."""
    code = getattr(exc, "value", None)
    text = str(exc) or type(exc).__name__
    if code == LIBRARY_NOT_FOUND_CODE:
        return (
            LIBRARY_NOT_FOUND,
            f"{text}: libnvidia-ml.so is not installed (no NVIDIA driver on this machine)",
        )
    if code == DRIVER_NOT_LOADED:
        return NO_DRIVER, f"{text}: the NVIDIA kernel module is not loaded (check `lsmod | grep nvidia`)"
    if code in (GPU_IS_LOST, RESET_REQUIRED):
        return GPU_LOST, f"{text}: a GPU fell off the bus or needs a reset; reboot needed"
    if code == LIB_RM_MISMATCH:
        return ERROR, f"{text}: driver library and kernel module differ (driver upgraded?); reboot needed"
    return ERROR, text


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(raw: int) -> str:
    return f"{raw // 1000}.{raw % 1000 // 10}"


@dataclass
class Sweep:
    """One reading of every GPU."""

    state: str = OK
    error: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    taken_at: float = 0.0  # time.time() when the sweep finished
    duration_s: float = 0.0


class Reader:
    """Keeps NVML initialised between sweeps; re-initialises after a failure (the driver may come back)."""

    def __init__(self, lib: Any | None = None) -> None:
        self._lib = lib
        self._ready = False
        self._event_sets: dict[str, Any] = {}  # uuid -> event set of that GPU's critical Xid events
        self.last_xid: dict[str, dict[str, Any]] = {}  # uuid -> {"xid": n, "time": epoch seconds}
        self._util_seen: dict[str, int] = {}  # uuid -> newest per-process sample timestamp (us) read

    @property
    def lib(self) -> Any:
        if self._lib is None:
            self._lib = load_library()
        return self._lib

    def sweep(self) -> Sweep:
        started = time.monotonic()
        result = Sweep()
        try:
            lib = self.lib
        except ImportError as exc:  # nvidia-ml-py itself is missing
            result.state, result.error = LIBRARY_NOT_FOUND, f"the pynvml module is not installed: {exc}"
            return self._finish(result, started)
        try:
            if not self._ready:
                lib.nvmlInit()
                self._ready = True
            result.driver_version = _str(lib.nvmlSystemGetDriverVersion())
            result.cuda_version = self._optional(lambda: _cuda_version(lib.nvmlSystemGetCudaDriverVersion()))
            for index in range(lib.nvmlDeviceGetCount()):
                result.gpus.append(self._read_gpu(index))
        except lib.NVMLError as exc:
            result.state, result.error = classify(exc)
            self._reset()
        except GpuLost as exc:
            result.state, result.error = GPU_LOST, str(exc)
            self._reset()
        return self._finish(result, started)

    def _finish(self, result: Sweep, started: float) -> Sweep:
        result.taken_at = time.time()
        result.duration_s = time.monotonic() - started
        return result

    def _reset(self) -> None:
        if self._ready:
            try:
                self.lib.nvmlShutdown()
            except Exception:  # already broken; the next sweep re-initialises
                log.debug("nvmlShutdown failed", exc_info=True)
        for event_set in self._event_sets.values():
            if event_set:
                try:
                    self.lib.nvmlEventSetFree(event_set)
                except Exception:  # the set died with the driver
                    log.debug("nvmlEventSetFree failed", exc_info=True)
        self._ready = False
        self._event_sets.clear()

    def _optional(self, read):
        """One field: NotSupported/NoPermission -> None; a lost GPU aborts the sweep."""
        try:
            value = read()
        except self.lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in (GPU_IS_LOST, RESET_REQUIRED):
                raise GpuLost(classify(exc)[1]) from exc
            if code not in (NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND):
                log.debug("NVML field read failed: %s", exc)  # one odd field must not hide the others
            return None
        if isinstance(value, int) and value in _SENTINELS:
            return None
        return value

    def _read_gpu(self, index: int) -> dict[str, Any]:
        lib, opt = self.lib, self._optional
        handle = lib.nvmlDeviceGetHandleByIndex(index)
        uuid = _str(lib.nvmlDeviceGetUUID(handle))
        util = opt(lambda: lib.nvmlDeviceGetUtilizationRates(handle))
        memory = opt(lambda: lib.nvmlDeviceGetMemoryInfo(handle))
        power = opt(lambda: lib.nvmlDeviceGetPowerUsage(handle))
        limit = opt(lambda: lib.nvmlDeviceGetEnforcedPowerLimit(handle))
        pci = opt(lambda: lib.nvmlDeviceGetPciInfo(handle))
        self._poll_xid(handle, uuid)
        return {
            "index": index,
            "uuid": uuid,
            "name": opt(lambda: _str(lib.nvmlDeviceGetName(handle))),
            "pci_bus_id": _str(pci.busId) if pci is not None else None,
            "utilization_gpu_pct": _field(util, "gpu"),
            "utilization_memory_pct": _field(util, "memory"),
            "memory_used_bytes": _field(memory, "used"),
            "memory_total_bytes": _field(memory, "total"),
            "temperature_c": opt(lambda: lib.nvmlDeviceGetTemperature(handle, lib.NVML_TEMPERATURE_GPU)),
            "power_draw_w": power / 1000 if power is not None else None,
            "power_limit_w": limit / 1000 if limit is not None else None,
            "sm_clock_mhz": opt(lambda: lib.nvmlDeviceGetClockInfo(handle, lib.NVML_CLOCK_SM)),
            "memory_clock_mhz": opt(lambda: lib.nvmlDeviceGetClockInfo(handle, lib.NVML_CLOCK_MEM)),
            "processes": self._processes(handle),
            "process_sm_util_pct": self._process_util(handle, uuid),
            "last_xid": self.last_xid.get(uuid),
        }

    def _processes(self, handle) -> list[dict[str, Any]] | None:
        lib = self.lib
        compute = self._optional(lambda: lib.nvmlDeviceGetComputeRunningProcesses(handle))
        graphics = self._optional(lambda: lib.nvmlDeviceGetGraphicsRunningProcesses(handle))
        if compute is None and graphics is None:
            return None
        seen: dict[int, dict[str, Any]] = {}
        compute_pids = {proc.pid for proc in compute or []}
        for proc in [*(compute or []), *(graphics or [])]:
            used = getattr(proc, "usedGpuMemory", None)
            used = None if used in _SENTINELS else used
            entry = seen.get(proc.pid)
            if entry is None:
                seen[proc.pid] = {
                    "pid": proc.pid,
                    **_process_owner(proc.pid),
                    "memory_used_bytes": used,
                    "compute": proc.pid in compute_pids,  # graphics only (the desktop's X) is not work
                }
            elif used is not None:  # a process with both contexts: count its memory once per context
                entry["memory_used_bytes"] = (entry["memory_used_bytes"] or 0) + used
        return sorted(seen.values(), key=lambda p: p["pid"])

    def _process_util(self, handle, uuid: str) -> dict[int, float] | None:
        """Per-process SM utilisation (%) since the last sweep, averaged over NVML's samples; {} when no
        process used the GPU since then, None when the driver cannot say."""
        lib = self.lib
        try:
            samples = lib.nvmlDeviceGetProcessUtilization(handle, self._util_seen.get(uuid, 0))
        except lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == NOT_FOUND:
                return {}
            if code in (GPU_IS_LOST, RESET_REQUIRED):
                raise GpuLost(classify(exc)[1]) from exc
            return None  # not supported (older boards, vGPU) or no permission
        by_pid: dict[int, list[int]] = {}
        for sample in samples:
            by_pid.setdefault(sample.pid, []).append(sample.smUtil)
            self._util_seen[uuid] = max(self._util_seen.get(uuid, 0), sample.timeStamp)
        return {pid: sum(values) / len(values) for pid, values in by_pid.items()}

    def _poll_xid(self, handle, uuid: str) -> None:
        """Drain this GPU's critical Xid events without waiting; remember the last one."""
        lib = self.lib
        event_set = self._event_sets.get(uuid)
        if event_set is None:
            try:
                event_set = lib.nvmlEventSetCreate()
                lib.nvmlDeviceRegisterEvents(handle, XID_CRITICAL_EVENT, event_set)
            except lib.NVMLError as exc:
                if getattr(exc, "value", None) in (GPU_IS_LOST, RESET_REQUIRED):
                    raise GpuLost(classify(exc)[1]) from exc
                event_set = False  # events not supported here (e.g. some vGPU); do not ask again
            self._event_sets[uuid] = event_set
        if event_set is False:
            return
        for _ in range(64):  # bounded: a storm of events must not hold the sweep
            try:
                event = lib.nvmlEventSetWait_v2(event_set, 0)
            except lib.NVMLError as exc:
                if getattr(exc, "value", None) in (GPU_IS_LOST, RESET_REQUIRED):
                    raise GpuLost(classify(exc)[1]) from exc
                return  # Timeout: no event pending
            self.last_xid[uuid] = {"xid": int(event.eventData), "time": time.time()}


def _field(struct: Any, name: str) -> Any:
    if struct is None:
        return None
    value = getattr(struct, name, None)
    return None if value in _SENTINELS else value


def _process_owner(pid: int) -> dict[str, Any]:
    """Name and user of a GPU process; None when it is gone or in another PID namespace."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return {"name": process.name(), "user": process.username()}
    except (psutil.Error, KeyError):  # KeyError: uid without a passwd entry
        return {"name": None, "user": None}
