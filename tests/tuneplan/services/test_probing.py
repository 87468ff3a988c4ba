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


def _headroom_advice(**kw):
    pred = probing.predict(SPEC, HW, SETUP)
    measured = {"device": "cuda", "process_bytes": int(pred.device_bytes), "torch_peak_bytes": pred.torch_peak_bytes}
    return probing.advise(SPEC, HW, SETUP, pred, measured, safety_margin=0.08, **kw)


def _suggested_seq(advice):
    import re

    m = re.search(r"Or a longer sequence: (\d+) tokens", " ".join(advice))
    return int(m.group(1)) if m else None


def test_a_longer_sequence_is_never_beyond_the_datasets_p99():
    """Issue 19: the probe suggested doubling the sequence up to the model's context (8192 here)
    whatever the examples' lengths; a longer sequence only trains padding past the p99."""
    assert _suggested_seq(_headroom_advice(dataset_p99=1300)) == 1408  # p99 rounded up as the plan rounds
    assert _suggested_seq(_headroom_advice(dataset_p99=1000)) is None  # 1024 already holds 99%
    unknown = _headroom_advice()  # no dataset measured: no length is suggested, and it says why
    assert _suggested_seq(unknown) is None and "--dataset" in " ".join(unknown)


def test_each_suggested_change_comes_with_the_command_that_applies_it():
    applied = []

    def apply(setup):
        applied.append(setup)
        return f"tuneplan train --preset p --batch {setup.micro_batch} --seq-len {setup.seq_len}"

    advice = _headroom_advice(dataset_p99=1300, apply=apply)
    commands = [a for a in advice if a.startswith(probing.APPLY)]
    assert len(commands) == 2 and len(applied) == 2
    assert advice[advice.index(commands[0]) - 1].startswith("The planner says micro-batch")
    assert f"--batch {applied[0].micro_batch} " in commands[0] and applied[0].micro_batch > SETUP.micro_batch
    assert applied[1].seq_len == 1408 and "--seq-len 1408" in commands[1]
    thin = probing.advise(SPEC, HW, SETUP, probing.predict(SPEC, HW, SETUP),
                          {"device": "cuda", "process_bytes": int(HW.usable_bytes() * 0.97)}, safety_margin=0.08,
                          apply=apply)
    change = next(i for i, a in enumerate(thin) if a.startswith("Change:"))
    assert thin[change + 1].startswith(probing.APPLY)


def test_changed_flags_turn_one_setup_into_the_other():
    import argparse
    import shlex

    from tuneplan.commands import train
    from tuneplan.services.command_line import changed_flags

    bigger = TrainSetup(**{**SETUP.__dict__, "micro_batch": 4, "grad_accum": 4, "seq_len": 2048})
    flags = changed_flags(SETUP, bigger)
    assert flags == ["--seq-len", "2048", "--batch", "4", "--grad-accum", "4"] or sorted(flags) == sorted(
        ["--seq-len", "2048", "--batch", "4", "--grad-accum", "4"])
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert train.given_setup(parser.parse_args(shlex.split(" ".join(flags)))).apply(SETUP) == bigger
