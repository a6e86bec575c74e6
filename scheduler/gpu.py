"""What NVML says about this machine's GPUs, in plain words when it says nothing.

`pynvml` comes from the `nvidia-ml-py` distribution. Tests pass `fakenvml.FakeNVML`
(built from a real H200 recording) or an object whose nvmlInit raises, in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class GpuInventory:
    count: int
    names: tuple[str, ...]
    uuids: tuple[str, ...]
    driver: str | None
    # Why there are no real GPUs, in words a person understands; "" when there are.
    why_none: str = ""


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def detect(nvml: Any = None) -> GpuInventory:
    """Count the NVIDIA GPUs on this machine through NVML. Never raises."""
    nvml = nvml if nvml is not None else _load_pynvml()
    if nvml is None:
        return GpuInventory(0, (), (), None, "the pynvml module (nvidia-ml-py) is not installed")
    try:
        nvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVMLError subclasses differ per failure
        name = type(e).__name__
        if "LibraryNotFound" in name:
            why = "no NVIDIA driver: libnvidia-ml.so was not found"
        elif "DriverNotLoaded" in name:
            why = "the NVIDIA driver is installed but not loaded"
        else:
            why = f"NVML could not start ({name}: {e})"
        return GpuInventory(0, (), (), None, why)
    try:
        count = int(nvml.nvmlDeviceGetCount())
        names: list[str] = []
        uuids: list[str] = []
        for i in range(count):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            names.append(_text(nvml.nvmlDeviceGetName(h)))
            uuids.append(_text(nvml.nvmlDeviceGetUUID(h)))
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        why = "" if count else "NVML is running but reports no GPU"
        return GpuInventory(count, tuple(names), tuple(uuids), driver, why)
    except Exception as e:  # noqa: BLE001
        return GpuInventory(0, (), (), None, f"NVML failed while listing GPUs ({type(e).__name__})")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001,S110 - shutting down a half-started NVML
            pass


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
