"""Reading the GPUs of one node through NVML, and saying plainly what failed.

`GpuSampler` takes the `pynvml` module (or `fakenvml.FakeNVML`) and turns each poll
into plain `GpuSample`s: unsupported fields are None ("n/a"), a lost GPU or rising
uncorrected ECC errors mark the GPU unhealthy, and NVML's NotFound from per-process
utilization means "no new sample", not a failure.

The per-node Ray actor that runs it is in agent.py; the daemon-side history and
per-job accounting in telemetry.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    used_memory: int | None  # bytes
    sm_util: int | None  # percent, None until NVML has a sample for this pid
    mem_util: int | None


@dataclass(frozen=True)
class GpuSample:
    # None everywhere means "n/a": unsupported by this GPU, or the GPU is lost.
    index: int
    uuid: str | None = None
    name: str | None = None
    memory_total: int | None = None  # bytes
    memory_used: int | None = None
    util_gpu: int | None = None  # percent
    util_memory: int | None = None
    temperature_c: int | None = None
    power_mw: int | None = None
    power_limit_mw: int | None = None
    ecc_uncorrected: int | None = None
    mig_mode: tuple[int, int] | None = None  # (current, pending)
    fan_speed: int | None = None  # None on data-centre GPUs: NVML says NotSupported
    processes: tuple[ProcessSample, ...] = ()
    healthy: bool = True
    problem: str = ""


# NVML gives a per-process sample only when the process ran kernels since the last
# query; one that has given none for this long is idle, not "as busy as last time".
PROC_UTIL_TTL_S = 5.0


class GpuSampler:
    def __init__(self, nvml: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml
        self.clock = clock
        nvml.nvmlInit()
        self.count = int(nvml.nvmlDeviceGetCount())
        self.last_seen_us: dict[int, int] = {}
        # (gpu, pid) -> (sm, mem, when we got it)
        self.proc_util: dict[tuple[int, int], tuple[int, int, float]] = {}
        self.ecc_baseline: dict[int, int] = {}
        self.lost: dict[int, str] = {}

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass

    def _get(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML query; None when this GPU does not support it."""
        try:
            return fn(*args)
        except self.nvml.NVMLError_NotSupported:
            return None

    def _memory(self, h: Any) -> Any:
        """Memory as nvidia-smi shows it. NVML's v1 call counts the driver's own
        reservation as used (616 MiB on an idle H200, seen on a real one); v2 gives it
        apart. v1 where v2 is missing (older drivers, the recordings' fake)."""
        nv = self.nvml
        version = getattr(nv, "nvmlMemory_v2", None)
        if version is not None:
            try:
                return nv.nvmlDeviceGetMemoryInfo(h, version=version)
            except nv.NVMLError:
                pass  # not on this driver: v1 below
        return self._get(nv.nvmlDeviceGetMemoryInfo, h)

    def sample(self) -> list[GpuSample]:
        return [self._sample_one(i) for i in range(self.count)]

    def _sample_one(self, index: int) -> GpuSample:
        nv = self.nvml
        if index in self.lost:
            return _dead(index, self.lost[index])
        try:
            h = nv.nvmlDeviceGetHandleByIndex(index)
            mem = self._memory(h)
            util = self._get(nv.nvmlDeviceGetUtilizationRates, h)
            ecc = self._get(
                nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            )
            mig = self._get(nv.nvmlDeviceGetMigMode, h)
            procs = self._processes(index, h)
            sample = GpuSample(
                index=index,
                uuid=_text(self._get(nv.nvmlDeviceGetUUID, h)),
                name=_text(self._get(nv.nvmlDeviceGetName, h)),
                memory_total=None if mem is None else int(mem.total),
                memory_used=None if mem is None else int(mem.used),
                util_gpu=None if util is None else int(util.gpu),
                util_memory=None if util is None else int(util.memory),
                temperature_c=self._get(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
                power_mw=self._get(nv.nvmlDeviceGetPowerUsage, h),
                power_limit_mw=self._get(nv.nvmlDeviceGetEnforcedPowerLimit, h),
                ecc_uncorrected=None if ecc is None else int(ecc),
                mig_mode=None if mig is None else (int(mig[0]), int(mig[1])),
                fan_speed=self._get(nv.nvmlDeviceGetFanSpeed, h),
                processes=procs,
                healthy=True,
            )
        except (nv.NVMLError_GpuIsLost, nv.NVMLError_Unknown) as e:
            # A GPU that fell off the bus stays lost until the node restarts.
            self.lost[index] = f"GPU {index} is lost ({e}); no new jobs are placed on it"
            return _dead(index, self.lost[index])
        if sample.ecc_uncorrected is not None:
            base = self.ecc_baseline.setdefault(index, sample.ecc_uncorrected)
            if sample.ecc_uncorrected > base:
                problem = f"uncorrected ECC errors rose from {base} to {sample.ecc_uncorrected}"
                return replace(sample, healthy=False, problem=problem)
        return sample

    def _processes(self, index: int, h: Any) -> tuple[ProcessSample, ...]:
        nv = self.nvml
        running = self._get(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(h, self.last_seen_us.get(index, 0))
        except nv.NVMLError_NotFound:
            samples = []  # no sample newer than the last one: keep what we knew
        except nv.NVMLError_NotSupported:
            samples = []
        now = self.clock()
        for s in samples:
            self.proc_util[(index, int(s.pid))] = (int(s.smUtil), int(s.memUtil), now)
            self.last_seen_us[index] = max(self.last_seen_us.get(index, 0), int(s.timeStamp))
        pids = {int(p.pid) for p in running}
        for key in [k for k in self.proc_util if k[0] == index and k[1] not in pids]:
            del self.proc_util[key]
        out = []
        for p in running:
            util = self.proc_util.get((index, int(p.pid)))
            if util is not None and now - util[2] > PROC_UTIL_TTL_S:
                util = (0, 0, util[2])
            used = getattr(p, "usedGpuMemory", None)
            out.append(
                ProcessSample(
                    pid=int(p.pid),
                    used_memory=None if used is None else int(used),
                    sm_util=None if util is None else util[0],
                    mem_util=None if util is None else util[1],
                )
            )
        return tuple(out)


def _text(v: object) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _dead(index: int, problem: str) -> GpuSample:
    return GpuSample(index, healthy=False, problem=problem)


def job_for_pid(pid: int, job_roots: Mapping[int, int], parent: Callable[[int], int | None]) -> int | None:
    """The labq job whose process tree holds `pid`, walking up through `parent`.

    `job_roots` maps each running job's top process to its job id. None means a GPU
    process started outside the scheduler.
    """
    seen = 0
    current: int | None = pid
    while current is not None and current > 1 and seen < 64:
        if current in job_roots:
            return job_roots[current]
        current = parent(current)
        seen += 1
    return None
