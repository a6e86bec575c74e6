"""The NVML sampler against the fake built from the real H200 recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pynvml
import pytest

from scheduler.fakenvml import DATA, FakeNVML
from scheduler.gpu import detect
from scheduler.monitor import GpuSampler, job_for_pid

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "nvml-h200"


def test_packaged_recording_is_the_shared_one() -> None:
    if not SHARED.exists():
        pytest.skip("../shared is not beside this checkout")
    for name in ("nvml_idle.json", "nvml_busy.json"):
        assert json.loads((DATA / name).read_text()) == json.loads((SHARED / name).read_text())


def test_idle_gpus_read_as_recorded() -> None:
    fake = FakeNVML(count=4)
    s = GpuSampler(fake).sample()
    idle = json.loads((DATA / "nvml_idle.json").read_text())["devices"][0]
    assert [g.index for g in s] == [0, 1, 2, 3]
    assert len({g.uuid for g in s}) == 4 and all(g.uuid.startswith("GPU-") for g in s if g.uuid)
    g = s[0]
    assert g.name == "NVIDIA H200" and g.memory_total == idle["memory_info"]["total"]
    assert g.util_gpu == 0 and g.power_mw == idle["power_usage_mw"] and g.temperature_c == 40
    assert g.mig_mode == (0, 0) and g.ecc_uncorrected == 0
    assert g.fan_speed is None  # NVMLError_NotSupported on an H200: n/a, not an error
    assert g.processes == () and g.healthy


def test_busy_gpu_follows_the_jobs_on_it() -> None:
    clock = [100.0]
    load = {1: [4242, 4243]}
    fake = FakeNVML(count=2, load=lambda i: load.get(i, []), clock=lambda: clock[0])
    sampler = GpuSampler(fake)
    s = sampler.sample()
    assert s[0].util_gpu == 0 and s[1].util_gpu == 100
    assert [p.pid for p in s[1].processes] == [4242, 4243]
    assert all(p.used_memory and p.used_memory > 20e9 for p in s[1].processes)
    assert [p.sm_util for p in s[1].processes] == [60, 40]
    # No newer sample: NVML raises NotFound; the last values stay.
    s = sampler.sample()
    assert [p.sm_util for p in s[1].processes] == [60, 40]
    load.clear()
    s = sampler.sample()
    assert s[1].util_gpu == 0 and s[1].processes == ()


def test_not_found_is_the_real_exception_class() -> None:
    fake = FakeNVML(count=1)
    fake.nvmlInit()
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetProcessUtilization(h, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetFanSpeed(h)


def test_lost_gpu_and_rising_ecc_mark_unhealthy() -> None:
    fake = FakeNVML(count=3)
    sampler = GpuSampler(fake)
    assert all(g.healthy for g in sampler.sample())
    fake.lose(1)
    fake.add_ecc_errors(2, 3)
    s = sampler.sample()
    assert s[0].healthy
    assert not s[1].healthy and "GPU 1 is lost" in s[1].problem
    assert not s[2].healthy and s[2].problem == "uncorrected ECC errors rose from 0 to 3"


def test_no_driver_is_said_in_plain_words() -> None:
    inv = detect()  # this machine has no NVIDIA driver
    if inv.count:
        pytest.skip("a real GPU is here")
    assert inv.why_none == "no NVIDIA driver: libnvidia-ml.so was not found"
    fake = detect(FakeNVML(count=8))
    assert fake.count == 8 and fake.names[0] == "NVIDIA H200" and fake.why_none == ""


def test_process_tree_maps_gpu_processes_to_jobs() -> None:
    # A job's shell starts python, which would be the process holding the GPU.
    proc = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(30)' & wait"],
        start_new_session=True,
    )
    try:
        kids: list[psutil.Process] = []
        for _ in range(100):
            kids = psutil.Process(proc.pid).children(recursive=True)
            if kids:
                break
            time.sleep(0.05)
        grandchild = kids[-1].pid

        def parent(pid: int) -> int | None:
            try:
                return psutil.Process(pid).ppid()
            except psutil.NoSuchProcess:
                return None

        assert job_for_pid(grandchild, {proc.pid: 17}, parent) == 17
        assert job_for_pid(os.getpid(), {proc.pid: 17}, parent) is None  # outside the scheduler
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_memory_used_leaves_out_the_drivers_reservation_where_nvml_v2_is_there() -> None:
    """Seen on a real H200: NVML v1 counts 615 MiB of driver reservation as used on an
    idle GPU (nvidia-smi: 0 MiB used, 616 reserved); v2 gives it apart."""
    from types import SimpleNamespace

    fake = FakeNVML(count=1)
    v1 = fake.nvmlDeviceGetMemoryInfo

    class V2(FakeNVML):
        nvmlMemory_v2 = 0x2000028

        def nvmlDeviceGetMemoryInfo(self, h: object, version: int | None = None) -> SimpleNamespace:  # type: ignore[override]
            m = v1(h)  # type: ignore[arg-type]
            if version is None:
                return m
            reserved = 615 << 20
            return SimpleNamespace(total=m.total, used=m.used - reserved, free=m.free, reserved=reserved)

    idle_v1 = GpuSampler(fake).sample()[0].memory_used
    idle_v2 = GpuSampler(V2(count=1)).sample()[0].memory_used
    assert idle_v1 is not None and idle_v2 == idle_v1 - (615 << 20)
