"""The one fake of the NVML boundary: the subset of the `pynvml` module that
`tuneplan.services.gpu.GpuProbe` calls, over a list of fake devices (dicts).

Shared by the probe tests, the `tuneplan plan` CLI tests and the UI tests; nothing above the
pynvml module is faked.
"""

from __future__ import annotations

from types import SimpleNamespace

MiB = 1024**2


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError (the real class needs the library)."""


class FakeNVML:
    """pynvml's functions over fake devices made by `gpu_device`."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = NVMLError

    def __init__(self, devices=(), *, init_error: Exception | None = None, driver="550.54.15", cuda=12040):
        self.devices = list(devices)
        self.init_error = init_error
        self.driver = driver
        self.cuda = cuda
        self.init_calls = 0

    def nvmlInit(self):
        self.init_calls += 1
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i >= len(self.devices) or self.devices[i] is None:
            raise NVMLError("GPU is lost")
        return self.devices[i]

    def nvmlDeviceGetName(self, h):
        return h["name"].encode()  # older bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["total"], free=h["total"] - h["used"], used=h["used"])

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return h["cc"]

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return self.cuda

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in h["procs"]]

    def nvmlDeviceGetUUID(self, h):
        return "GPU-" + h["name"].replace(" ", "-")

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 71

    def nvmlDeviceGetPowerUsage(self, h):
        return 312_500  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 450_000


def gpu_device(name, total_mib, used_mib=300, cc=(8, 9), procs=()) -> dict:
    """One fake device: memory in MiB, compute capability, other processes as (pid, bytes)."""
    return {"name": name, "total": total_mib * MiB, "used": used_mib * MiB, "cc": cc, "procs": list(procs)}
