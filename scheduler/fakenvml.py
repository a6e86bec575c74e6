"""A stand-in for the `pynvml` module, built from a real H200 recording.

It speaks the `pynvml` API the monitor uses, with the recording's shapes and units
(bytes, milliwatts, degrees C, percent) and the real exception classes from
`nvidia-ml-py` (NotSupported for fan speed, NUMA node and retired pages; NotFound
from per-process utilization when there is no new sample). It serves:
- the tests (the only fake labq's tests use at the NVML boundary), and
- simulated GPUs (`labq up --gpus N` on a machine without NVIDIA GPUs), so that
  every view shows them alive, with utilization that follows the jobs on them.

Each simulated GPU is busy while `load(index)` returns pids (the job processes
holding it) and idle otherwise; `lose(index)` makes it fall off the bus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

DATA = Path(__file__).resolve().parent / "data" / "nvml-h200"

# The real exception classes, so `except nvml.NVMLError_NotSupported` means the same
# thing against the fake as against the driver.
NVMLError = pynvml.NVMLError
NVMLError_NotSupported = pynvml.NVMLError_NotSupported
NVMLError_NotFound = pynvml.NVMLError_NotFound
NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
NVMLError_Unknown = pynvml.NVMLError_Unknown
NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def _raise(recorded: dict[str, Any]) -> None:
    """Raise the exception class the recording names, e.g. NVMLError_NotSupported."""
    raise getattr(pynvml, recorded["error"])()


@dataclass
class _Handle:
    index: int


class FakeNVML:
    """Module-like object: pass it wherever the monitor takes the `pynvml` module."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = NVML_VOLATILE_ECC

    def __init__(
        self,
        count: int,
        load: Callable[[int], list[int]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.idle = _load("nvml_idle.json")
        self.busy = _load("nvml_busy.json")
        self.count = count
        self.load = load or (lambda index: [])
        self.clock = clock or (lambda: 0.0)
        self.lost: set[int] = set()
        self.ecc: dict[int, int] = {}
        self.initialized = False

    # -- test controls -------------------------------------------------------------------------
    def lose(self, index: int) -> None:
        self.lost.add(index)

    def add_ecc_errors(self, index: int, n: int) -> None:
        self.ecc[index] = self.ecc.get(index, 0) + n

    # -- helpers ----------------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.initialized:
            raise NVMLError_Uninitialized()

    def _dev(self, handle: _Handle) -> dict[str, Any]:
        self._check()
        if handle.index in self.lost:
            raise NVMLError_GpuIsLost()
        pids = self.load(handle.index)
        dev: dict[str, Any] = (self.busy if pids else self.idle)["devices"][0]
        return dev

    # -- the pynvml API -------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return str(self.idle["driver_version"])

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        if not 0 <= index < self.count:
            raise pynvml.NVMLError_InvalidArgument()
        return _Handle(index)

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        return str(self._dev(h)["name"])

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        base = str(self._dev(h)["uuid"])
        # One recorded GPU serves many: keep the real shape, vary the last digits.
        return f"{base[:-4]}{h.index:04x}"

    def nvmlDeviceGetIndex(self, h: _Handle) -> int:
        self._dev(h)
        return h.index

    def nvmlDeviceGetMemoryInfo(self, h: _Handle) -> SimpleNamespace:
        return SimpleNamespace(**self._dev(h)["memory_info"])

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> SimpleNamespace:
        return SimpleNamespace(**self._dev(h)["utilization_rates"])

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int) -> int:
        return int(self._dev(h)["temperature_gpu"])

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        return int(self._dev(h)["power_usage_mw"])

    def nvmlDeviceGetEnforcedPowerLimit(self, h: _Handle) -> int:
        return int(self._dev(h)["power_limit_mw"])

    def nvmlDeviceGetTotalEccErrors(self, h: _Handle, error_type: int, counter_type: int) -> int:
        return int(self._dev(h)["ecc_volatile_uncorrected"]) + self.ecc.get(h.index, 0)

    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        return list(self._dev(h)["mig_mode"])

    def nvmlDeviceGetFanSpeed(self, h: _Handle) -> int:
        _raise(self._dev(h)["fan_speed"])
        return 0

    def nvmlDeviceGetNumaNodeId(self, h: _Handle) -> int:
        _raise(self._dev(h)["numa_node"])
        return 0

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: _Handle) -> int:
        _raise(self._dev(h)["retired_pages_pending"])
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        dev = self._dev(h)
        pids = self.load(h.index)
        recorded = dev["compute_processes"] or self.busy["devices"][0]["compute_processes"]
        return [SimpleNamespace(**{**recorded[i % len(recorded)], "pid": pid}) for i, pid in enumerate(pids)]

    def nvmlDeviceGetProcessUtilization(self, h: _Handle, last_seen_us: int) -> list[SimpleNamespace]:
        self._dev(h)
        pids = self.load(h.index)
        now_us = int(self.clock() * 1e6)
        if not pids or now_us <= last_seen_us:
            # What NVML says when there is no sample newer than last_seen_us.
            _raise(self.idle["devices"][0]["process_utilization"])
        recorded = self.busy["process_utilization_last_2s"]
        return [
            SimpleNamespace(**{**recorded[i % len(recorded)], "pid": pid, "timeStamp": now_us})
            for i, pid in enumerate(pids)
        ]
