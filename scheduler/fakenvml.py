"""A stand-in for the `pynvml` module, built from a real H200 recording.

It speaks the `pynvml` API the monitor uses, with the recording's shapes and units
(bytes, milliwatts, degrees C, percent) and the real exception classes from
`nvidia-ml-py` (NotSupported for fan speed, NUMA node and retired pages; NotFound
from per-process utilization when there is no new sample). It serves:
- the tests (the only fake labq's tests use at the NVML boundary), and
- simulated GPUs (`labq up --gpus N` on a machine without NVIDIA GPUs), so that
  every view shows them alive, with utilization that follows the jobs on them.

Each simulated GPU is busy while `load(index)` returns pids (the job processes
holding it) and idle otherwise. How busy follows `activity(pid)` (0..1; the node
agent feeds it the CPU use of the job's process tree, so a job that sleeps shows an
idle GPU and a job that computes shows a busy one). `lose(index)` makes a GPU fall
off the bus; `add_ecc_errors` makes its uncorrected ECC count rise.
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
# The recordings simulated GPUs may be served from (`--simulate-gpu MODEL`): a mixed
# cluster from real shapes and values.
MODELS = ("h200", "h100")

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


def _load(name: str, model: str = "h200") -> dict[str, Any]:
    if model not in MODELS:
        raise ValueError(f"no recording of a {model!r} GPU to simulate (there are: {', '.join(MODELS)})")
    data: dict[str, Any] = json.loads((DATA.parent / f"nvml-{model}" / name).read_text())
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
        activity: Callable[[int], float] | None = None,
        model: str = "h200",
    ) -> None:
        self.idle = _load("nvml_idle.json", model)
        self.busy = _load("nvml_busy.json", model)
        self.count = count
        self.load = load or (lambda index: [])
        self.clock = clock or (lambda: 0.0)
        self.activity = activity or (lambda pid: 1.0)
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

    def _busy_fraction(self, index: int) -> float:
        pids = self.load(index)
        return min(1.0, max([max(0.0, self.activity(p)) for p in pids], default=0.0))

    def _scaled(self, busy: int | float, idle: int | float, fraction: float) -> int:
        return int(round(idle + (busy - idle) * fraction))

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
        total = int(self._dev(h)["memory_info"]["total"])
        base = int(self.idle["devices"][0]["memory_info"]["used"])
        # The driver's own reservation plus what each process holds, as on the real GPU.
        used = min(
            total, base + sum(int(p.usedGpuMemory) for p in self.nvmlDeviceGetComputeRunningProcesses(h))
        )
        return SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> SimpleNamespace:
        busy = self._dev(h)["utilization_rates"]
        idle = self.idle["devices"][0]["utilization_rates"]
        f = self._busy_fraction(h.index)
        return SimpleNamespace(**{k: self._scaled(busy[k], idle[k], f) for k in busy})

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int) -> int:
        busy = self._dev(h)["temperature_gpu"]
        return self._scaled(busy, self.idle["devices"][0]["temperature_gpu"], self._busy_fraction(h.index))

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        busy = self._dev(h)["power_usage_mw"]
        return self._scaled(busy, self.idle["devices"][0]["power_usage_mw"], self._busy_fraction(h.index))

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
        # A process that ran no kernel since last_seen_us leaves no sample.
        active = [(i, pid, self.activity(pid)) for i, pid in enumerate(pids)]
        active = [(i, pid, a) for i, pid, a in active if a > 0]
        if not active or now_us <= last_seen_us:
            # What NVML says when there is no sample newer than last_seen_us.
            _raise(self.idle["devices"][0]["process_utilization"])
        recorded = self.busy["process_utilization_last_2s"]
        out = []
        for i, pid, a in active:
            rec = recorded[i % len(recorded)]
            scaled = {
                "smUtil": self._scaled(rec["smUtil"], 0, min(a, 1.0)),
                "memUtil": self._scaled(rec["memUtil"], 0, min(a, 1.0)),
            }
            out.append(SimpleNamespace(**{**rec, **scaled, "pid": pid, "timeStamp": now_us}))
        return out
