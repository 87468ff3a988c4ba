"""UI test helpers: the real services, with fakes only at the NVML and Hub boundaries."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from tuneplan.services.gpu import GpuProbe
from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter, RunsAdapter
from tuneplan.ui.services import ServiceBundle

DATA = Path(__file__).resolve().parents[2] / "data"
RUNS = DATA / "runs"
MiB = 1024**2


class FakeNVML:
    """The pynvml functions GpuProbe calls, over fake devices (dicts)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, devices=(), init_error: Exception | None = None):
        self.devices = list(devices)
        self.init_error = init_error

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetName(self, h):
        return h["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["total"], free=h["total"] - h["used"], used=h["used"])

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return h.get("cc", (8, 9))

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 12040

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in h.get("procs", [])]

    def nvmlDeviceGetUUID(self, h):
        return "GPU-fake"

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 71

    def nvmlDeviceGetPowerUsage(self, h):
        return 312_500

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 450_000


class NVMLError_DriverNotLoaded(Exception):
    pass


def rtx_4090(used_mib=600, procs=((4242, 500 * MiB),)):
    return {"name": "NVIDIA GeForce RTX 4090", "total": 24564 * MiB, "used": used_mib * MiB,
            "cc": (8, 9), "procs": list(procs)}


class FakeHub:
    """The Hub boundary: nothing is reachable, as in an offline test run."""

    def __init__(self, files: dict | None = None, error: Exception | None = None):
        self.files = files or {}
        self.error = error

    def list_files(self, repo_id, repo_type):
        if self.error:
            raise self.error
        return [name for (repo, name) in self.files if repo == repo_id]

    def download(self, repo_id, filename, repo_type):
        if self.error:
            raise self.error
        return Path(self.files[(repo_id, filename)])


def make_services(tmp_path: Path, *, nvml=None, hub=None) -> ServiceBundle:
    return ServiceBundle(
        gpu=GpuProbe(nvml=nvml if nvml is not None else FakeNVML(init_error=NVMLError_DriverNotLoaded("Driver Not Loaded"))),
        models=ModelsAdapter(hub=hub),
        planning=PlanningAdapter(),
        runs=RunsAdapter(tmp_path / "runs"),
        hub_files=hub or FakeHub(),
        runs_root=tmp_path / "runs",
    )



async def wait_for(pilot, predicate, timeout: float = 10.0) -> None:
    """Let the app run until `predicate()` holds (workers report through messages)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)
