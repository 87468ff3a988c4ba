"""The NVML probe, with only the `pynvml` module boundary faked."""

from __future__ import annotations

import os

from fake_nvml import FakeNVML, NVMLError
from fake_nvml import gpu_device as _dev
from tuneplan.services.gpu import GpuProbe

MiB = 1024**2


def test_probe_reports_memory_capabilities_and_catalog_entry():
    nv = FakeNVML([
        _dev("NVIDIA GeForce RTX 4090", 24564, used_mib=2324, procs=[(4242, 2000 * MiB), (os.getpid(), 24 * MiB)]),
        _dev("Tesla T4", 15360, cc=(7, 5)),
    ])
    gpus = GpuProbe(nvml=nv).probe()
    assert [g.index for g in gpus] == [0, 1]
    g = gpus[0]
    assert g.name == "NVIDIA GeForce RTX 4090"
    assert g.total_bytes == 24564 * MiB and g.free_bytes == (24564 - 2324) * MiB
    assert g.used_bytes == 2324 * MiB
    assert g.other_processes == ((4242, 2000 * MiB),), "our own process is not 'other'"
    assert g.other_processes_bytes == 2000 * MiB
    assert g.bf16 and g.compute_capability == (8, 9)
    assert g.driver_version == "550.54.15" and g.cuda_version == "12.4"
    assert g.catalog is not None and g.catalog.key == "rtx-4090"
    assert g.as_planner_gpu().bf16_tflops == g.catalog.bf16_tflops
    t4 = gpus[1]
    assert not t4.bf16 and t4.catalog.key == "t4"
    assert nv.init_calls == 1


def test_init_is_lazy_and_happens_once():
    nv = FakeNVML([_dev("NVIDIA H100 80GB HBM3", 81559, cc=(9, 0))])
    probe = GpuProbe(nvml=nv)
    assert nv.init_calls == 0
    probe.probe()
    probe.probe()
    probe.sample(0)
    assert nv.init_calls == 1


def test_no_driver_gives_empty_list_and_a_reason():
    nv = FakeNVML([], init_error=NVMLError("NVML Shared Library Not Found"))
    probe = GpuProbe(nvml=nv)
    assert probe.probe() == []
    assert probe.sample(0) is None
    assert not probe.available()
    assert "NVML not available" in probe.status() and "Shared Library" in probe.status()


def test_no_gpu_says_so():
    probe = GpuProbe(nvml=FakeNVML([]))
    assert probe.probe() == []
    assert probe.status() == "NVML found no NVIDIA GPU"


def test_vanished_gpu_is_skipped_not_raised():
    nv = FakeNVML([None, _dev("NVIDIA A100-SXM4-40GB", 40960, cc=(8, 0))])
    gpus = GpuProbe(nvml=nv).probe()
    assert [g.index for g in gpus] == [1]
    assert gpus[0].catalog.key == "a100-40gb"


def test_unknown_card_still_plannable_without_catalog_rates():
    nv = FakeNVML([_dev("NVIDIA Future X1", 65536, cc=(10, 0), procs=[(77, None)])])
    g = GpuProbe(nvml=nv).probe()[0]
    assert g.catalog is None
    assert g.other_processes_bytes is None  # NVML could not say how much (containers)
    planner_gpu = g.as_planner_gpu()
    assert planner_gpu.memory_bytes == 65536 * MiB and planner_gpu.bf16 and planner_gpu.arch == "blackwell"
    assert planner_gpu.bf16_tflops is None


def test_sample_for_the_dashboard():
    nv = FakeNVML([_dev("NVIDIA GeForce RTX 4090", 24564, used_mib=10000)])
    s = GpuProbe(nvml=nv).sample(0)
    assert s.utilization_pct == 87 and s.temperature_c == 71
    assert s.power_w == 312.5 and s.power_limit_w == 450.0
    assert s.memory_used_bytes == 10000 * MiB and s.memory_total_bytes == 24564 * MiB
    assert GpuProbe(nvml=nv).sample(5) is None


def test_cpu_hardware_is_this_machines_ram_through_psutil():
    """The CPU as planner hardware: RAM total and available from psutil (no /proc parsing, so
    it works on macOS too); presets and the train command use this one."""
    import psutil

    from tuneplan.services import gpu, presets

    total, available = gpu.ram_bytes()
    assert total == psutil.virtual_memory().total and 0 < available <= total
    hw = gpu.cpu_hardware()
    assert hw.gpu.key == gpu.CPU_KEY == presets.CPU and hw.gpu.memory_bytes == total
    assert 0 < hw.free_bytes <= total and not hw.gpu.bf16
    assert presets.cpu_hardware is gpu.cpu_hardware
