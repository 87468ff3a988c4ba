"""The probe report's advice (pure: planner figures, no torch) and NVML's per-process memory."""

from __future__ import annotations

import os

from fake_nvml import FakeNVML, gpu_device
from planner import catalog
from planner.gpus import GiB, get_gpu
from planner.setup import TrainSetup
from planner.solver import Hardware
from tuneplan.services import probing
from tuneplan.services.gpu import GpuProbe

SPEC = catalog.get("llama-3.1-8b").spec()
HW = Hardware(gpu=get_gpu("rtx-4090"), source="catalog")
SETUP = TrainSetup(method="qlora", seq_len=1024, micro_batch=2, grad_accum=8, grad_checkpointing=True)


def _advice(process_bytes, setup=SETUP, peak_factor=1.0):
    pred = probing.predict(SPEC, HW, setup)
    measured = {"device": "cuda", "process_bytes": int(process_bytes),
                "torch_peak_bytes": int(pred.torch_peak_bytes * peak_factor)}
    return pred, probing.advise(SPEC, HW, setup, pred, measured, safety_margin=0.08)


def test_headroom_suggests_a_larger_micro_batch_and_sequence_re_predicted():
    _, advice = _advice(probing.predict(SPEC, HW, SETUP).device_bytes)
    text = " ".join(advice)
    assert advice[0].startswith("Headroom")
    assert "micro-batch" in text and "same effective batch 16" in text and "fits" in text
    assert "longer sequence" in text
    # the suggested batch really fits the budget by the planner's own figures
    budget = HW.usable_bytes() * 0.92
    mb = int(text.split("The planner says micro-batch ")[1].split()[0])
    bigger = probing.predict(SPEC, HW, TrainSetup(**{**SETUP.__dict__, "micro_batch": mb, "grad_accum": 16 // mb}))
    assert bigger.device_bytes <= budget < probing.predict(
        SPEC, HW, TrainSetup(**{**SETUP.__dict__, "micro_batch": 16, "grad_accum": 1})).device_bytes


def test_thin_margin_says_what_to_change():
    _, advice = _advice(HW.usable_bytes() * 0.97, peak_factor=1.2)
    text = " ".join(advice)
    assert "under-predicted the torch peak by 17%" in text
    assert "Thin margin" in text and "Change:" in text


def test_good_fit_keeps_the_configuration():
    _, advice = _advice(HW.usable_bytes() * 0.88)
    assert len(advice) == 1 and advice[0].startswith("Good fit")


def test_nvml_process_memory_of_this_process():
    me = os.getpid()
    nv = FakeNVML([gpu_device("NVIDIA H200", 143771, used_mib=20000, procs=[(me, 7 * GiB), (4242, GiB)]),
                   gpu_device("NVIDIA H200", 143771, procs=[(me, GiB)])])
    probe = GpuProbe(nvml=nv)
    assert probe.process_memory() == 8 * GiB
    assert probe.process_memory(4242) == GiB
    assert probe.process_memory(1) is None  # not listed (a container's host pids): unknown, not 0
    assert probe.used_memory() == (20000 + 300) * 1024**2
    assert GpuProbe(nvml=FakeNVML(init_error=RuntimeError("no driver"))).process_memory() is None
