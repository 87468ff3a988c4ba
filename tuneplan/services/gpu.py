"""The GPU probe: what NVML sees on this machine, mapped to the planner's GPU catalog.

NVML comes from `nvidia-ml-py` (the `pynvml` module). The probe initialises NVML lazily, on
the first call, and degrades instead of raising: no driver, no GPU or a GPU that vanished
give an empty list (`probe()`), None (`sample()`), and a reason in `status()`. Nothing here
imports torch or textual.

Tests fake only the NVML boundary: `GpuProbe(nvml=<object with the pynvml functions>)`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from planner.gpus import CPU_ARCH, GPU, match_nvml


@dataclass(frozen=True)
class DetectedGPU:
    """One GPU as NVML reports it at probe time. Memory in bytes."""

    index: int
    """NVML device index (the order `nvidia-smi` lists)."""
    name: str
    """Name as NVML reports it, e.g. `NVIDIA GeForce RTX 4090`."""
    uuid: str | None
    total_bytes: int
    """Total memory (what `nvidia-smi` shows as total), in bytes."""
    free_bytes: int
    """Memory free right now, in bytes: what a new training process can use."""
    used_bytes: int
    """Memory in use right now by every process and the driver, in bytes."""
    other_processes_bytes: int | None
    """Memory held by compute processes other than this one, in bytes (None: NVML won't say)."""
    other_processes: tuple[tuple[int, int | None], ...]
    """(pid, bytes or None) of every other compute process on the card."""
    compute_capability: tuple[int, int] | None
    bf16: bool
    """bfloat16 support: compute capability >= 8.0 (Ampere or newer)."""
    driver_version: str | None
    cuda_version: str | None
    """Highest CUDA version the driver supports, e.g. `12.4`."""
    catalog: GPU | None
    """The matching planner catalog entry (speed, price), None when the card is not in it."""

    def as_planner_gpu(self) -> GPU:
        """A planner `GPU` for this card: catalog rates, this card's own total memory and bf16."""
        if self.catalog is not None:
            base = self.catalog
            return GPU(
                key=base.key, name=self.name, memory_bytes=self.total_bytes, bf16=self.bf16,
                arch=base.arch, bf16_tflops=base.bf16_tflops, bandwidth_gbs=base.bandwidth_gbs,
                price_per_hour=base.price_per_hour, interconnect=base.interconnect,
                compute_capability=self.compute_capability or base.compute_capability,
                segment=base.segment,
            )
        return GPU(
            key=f"nvml-{self.index}", name=self.name, memory_bytes=self.total_bytes, bf16=self.bf16,
            arch=_arch_from_cc(self.compute_capability), compute_capability=self.compute_capability,
        )


@dataclass(frozen=True)
class GPUSample:
    """One reading of a GPU's live state, for the dashboard. None for what NVML won't say."""

    index: int
    timestamp: float
    """`time.time()` when read."""
    utilization_pct: int | None
    """SM utilisation over the last sample period, percent."""
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None


def _arch_from_cc(cc: tuple[int, int] | None) -> str:
    if cc is None:
        return "unknown"
    major, minor = cc
    if major >= 10:
        return "blackwell"
    return {7: "turing" if minor >= 5 else "volta", 8: "ada" if minor >= 9 else "ampere", 9: "hopper"}.get(
        major, "unknown"
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuProbe:
    """Lazy, non-raising access to NVML. One instance per process is enough (thread-safe)."""

    def __init__(self, nvml: ModuleType | Any | None = None):
        self._nvml: Any = nvml
        """`pynvml` (nvidia-ml-py, which ships no type hints) or a fake of it; None until `_init`."""
        self._ready = False
        self._reason: str | None = None
        self._lock = threading.Lock()

    # -- initialisation --------------------------------------------------------------------
    def _init(self) -> bool:
        with self._lock:
            if self._ready:
                return True
            if self._reason is not None:
                return False
            try:
                if self._nvml is None:
                    import pynvml  # nvidia-ml-py

                    self._nvml = pynvml
                self._nvml.nvmlInit()
                self._ready = True
            except ImportError:
                self._reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
                self._reason = f"NVML not available ({_text(exc) or type(exc).__name__}): no NVIDIA driver or GPU"
            return self._ready

    def status(self) -> str:
        """`ok`, or one sentence why no GPU can be seen."""
        if not self._init():
            return self._reason or "not available"
        try:
            if self._nvml.nvmlDeviceGetCount() == 0:
                return "NVML found no NVIDIA GPU"
        except Exception as exc:
            return f"NVML error: {_text(exc)}"
        return "ok"

    def available(self) -> bool:
        return self.status() == "ok"

    def shutdown(self) -> None:
        with self._lock:
            if self._ready:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
            self._ready = False

    # -- probing ---------------------------------------------------------------------------
    def probe(self) -> list[DetectedGPU]:
        """Every GPU NVML sees, with memory and capabilities; [] when there are none or no NVML."""
        if not self._init():
            return []
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:
            return []
        driver = self._optional(nv.nvmlSystemGetDriverVersion)
        cuda = self._cuda_version()
        out = []
        for i in range(count):
            gpu = self._probe_one(i, driver, cuda)
            if gpu is not None:
                out.append(gpu)
        return out

    def _probe_one(self, index: int, driver: str | None, cuda: str | None) -> DetectedGPU | None:
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            name = _text(nv.nvmlDeviceGetName(handle))
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
        except Exception:  # the GPU vanished or fell off the bus: skip it, never raise
            return None
        cc = self._optional(nv.nvmlDeviceGetCudaComputeCapability, handle)
        cc = (int(cc[0]), int(cc[1])) if cc else None
        procs = self._optional(nv.nvmlDeviceGetComputeRunningProcesses, handle)
        me = os.getpid()
        others: list[tuple[int, int | None]] = []
        if procs is not None:
            for p in procs:
                if int(p.pid) == me:
                    continue
                used = getattr(p, "usedGpuMemory", None)
                others.append((int(p.pid), int(used) if used is not None else None))
        if procs is None or any(b is None for _, b in others):
            other_bytes = None
        else:
            other_bytes = sum(b or 0 for _, b in others)
        uuid = self._optional(nv.nvmlDeviceGetUUID, handle)
        total = int(mem.total)
        catalog = match_nvml(name, total)
        if cc is not None:
            bf16 = cc >= (8, 0)
        else:  # NVML would not say: trust the catalog entry, else assume the safe fp16
            bf16 = catalog.bf16 if catalog is not None else False
        return DetectedGPU(
            index=index, name=name, uuid=_text(uuid) if uuid is not None else None,
            total_bytes=total, free_bytes=int(mem.free), used_bytes=int(mem.used),
            other_processes_bytes=other_bytes, other_processes=tuple(others),
            compute_capability=cc, bf16=bf16,
            driver_version=_text(driver) if driver is not None else None, cuda_version=cuda,
            catalog=catalog,
        )

    def _cuda_version(self) -> str | None:
        nv = self._nvml
        fn = getattr(nv, "nvmlSystemGetCudaDriverVersion_v2", None) or getattr(
            nv, "nvmlSystemGetCudaDriverVersion", None
        )
        v = self._optional(fn) if fn else None
        if v is None:
            return None
        v = int(v)  # e.g. 12040 -> "12.4" (NVML encodes 1000*major + 10*minor)
        return f"{v // 1000}.{(v % 1000) // 10}"

    @staticmethod
    def _optional(fn, *args):
        try:
            return fn(*args)
        except Exception:
            return None

    # -- dashboard sampling ----------------------------------------------------------------
    def sample(self, index: int) -> GPUSample | None:
        """Utilisation, memory, temperature and power of GPU `index` now; None when unavailable."""
        if not self._init():
            return None
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except Exception:
            return None
        util = self._optional(nv.nvmlDeviceGetUtilizationRates, handle)
        mem = self._optional(nv.nvmlDeviceGetMemoryInfo, handle)
        temp = self._optional(nv.nvmlDeviceGetTemperature, handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
        power_mw = self._optional(nv.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        limit_fn = getattr(nv, "nvmlDeviceGetEnforcedPowerLimit", None)
        limit_mw = self._optional(limit_fn, handle) if limit_fn else None
        return GPUSample(
            index=index, timestamp=time.time(),
            utilization_pct=int(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            temperature_c=int(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
        )


    # -- one process's memory (what `nvidia-smi` lists for it) ---------------------------------
    def process_memory(self, pid: int | None = None) -> int | None:
        """GPU memory NVML lists for process `pid` (default: this one), summed over the GPUs, in
        bytes; None when NVML is unavailable or does not list the process (inside a container
        NVML reports the host's process ids)."""
        if not self._init():
            return None
        nv = self._nvml
        pid = os.getpid() if pid is None else pid
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:
            return None
        total, found = 0, False
        for i in range(count):
            handle = self._optional(nv.nvmlDeviceGetHandleByIndex, i)
            procs = self._optional(nv.nvmlDeviceGetComputeRunningProcesses, handle) if handle is not None else None
            for p in procs or ():
                used = getattr(p, "usedGpuMemory", None)
                if int(p.pid) == pid and used is not None:
                    total, found = total + int(used), True
        return total if found else None

    def used_memory(self) -> int | None:
        """Memory in use on all GPUs together (every process and the driver), in bytes; None
        without NVML."""
        gpus = self.probe()
        return sum(g.used_bytes for g in gpus) if gpus else None


_default: GpuProbe | None = None


def default_probe() -> GpuProbe:
    """The process-wide probe (created on first use)."""
    global _default
    if _default is None:
        _default = GpuProbe()
    return _default


def detect_gpus() -> list[DetectedGPU]:
    """Shortcut: `default_probe().probe()`."""
    return default_probe().probe()


# -- the host: RAM and the CPU as planner hardware ---------------------------------------------
def ram_bytes() -> tuple[int, int]:
    """(total, available now) RAM in bytes, from psutil (`virtual_memory()`: Linux
    MemTotal/MemAvailable, macOS and Windows equivalents)."""
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


CPU_KEY = "cpu"
"""`GPU.key` (and a preset's `constraints.gpu`) of the CPU as a training device."""


def cpu_hardware() -> Any:
    """This machine's CPU as the planner's `Hardware`: memory = the RAM available now."""
    from planner.solver import Hardware

    total, available = ram_bytes()
    gpu = GPU(key=CPU_KEY, name=f"this machine's CPU ({os.cpu_count() or 1} cores, no GPU)", memory_bytes=total,
              bf16=False, arch=CPU_ARCH, segment="cpu")
    return Hardware(gpu=gpu, free_bytes=min(available, total), source="cpu")
