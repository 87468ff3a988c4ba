"""The safety margin is derived from the memory model's measured error (planner/margins.py).

Recomputes both residuals from the data they come from, with the current memory model, and
checks the regime table: the published runs of our stack (tests/data/calibration/cases.json)
and the CUDA-semantics trace grid (tests/data/traces/cuda_grid.csv, written by
bench/bench_trace_cuda.py --csv). Also: the full-size grid itself stays within the stated
accuracy (1% median, 5% worst), and the plan says which regime's margin it kept.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from planner import catalog
from planner.gpus import GPU
from planner.margins import DEFAULT_SAFETY_MARGIN, REGIMES, derive_margin, margin_sentence, regime_for
from planner.memory import estimate_memory
from verification.memory_calibration import run_all
from planner.setup import TrainSetup

GRID = Path(__file__).resolve().parents[1] / "data" / "traces" / "cuda_grid.csv"
OUR_STACK = "peft-method-comparison (L40S, reserved - init, p99)"


def _long_context(setup: TrainSetup) -> bool:
    return setup.offload_activations or setup.tiled_mlp or setup.chunked_norm


def _setup(row) -> TrainSetup:
    """The traced setup of a grid row (its JSON)."""
    return TrainSetup(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(row["setup"]).items()})


def _grid_rows(long_context: bool = False):
    """(case, estimate, row) of every grid case; the long-context ones (activation offloading,
    tiled MLP: bench/bench_trace_cuda.py LONG_CONTEXT) apart, with `long_context=True`."""
    with GRID.open() as fh:
        for row in csv.DictReader(fh):
            setup = _setup(row)
            if _long_context(setup) != long_context:
                continue
            gpu = GPU(key=row["arch"], name=row["arch"], memory_bytes=80 * 2**30, bf16=True, arch=row["arch"])
            packed = setup.packing
            est = estimate_memory(catalog.load_spec(row["model"]), setup, gpu, padded_rows=packed)
            yield row["case"], est, row


def _grid_errors() -> list[float]:
    return [est.torch_peak_bytes / int(row["trace_peak_bytes"]) - 1 for _, est, row in _grid_rows()]


def test_the_long_context_cases_agree_with_the_trace_within_one_percent():
    """Unsloth's long-context setup (QLoRA r32 all-linear, micro-batch 1) on Llama-3.1-8B and
    -70B at 32k and 128k and at the planner's own `--seq-len max`, every long-context knob on:
    the CUDA-semantics trace (offloaded tensors in host RAM, the tiled MLP's real code) and the
    planner agree within 1% on the device peak and on the host RAM the offload holds."""
    rows = list(_grid_rows(long_context=True))
    cases = {case for case, _, _ in rows}
    # every long-context case traced: with the chunked RMSNorm (the long-context path's norm) as
    # `long:`, and with transformers' norm as `long-transformers-norm:` (the same cases traced before
    # the chunked norm existed)
    chunked = {row["case"] for _, est, row in rows if json.loads(row["setup"]).get("chunked_norm")}
    assert {"long:llama-3.1-8b:32768", "long:llama-3.1-8b:131072", "long:llama-3.1-70b:32768",
            "long:llama-3.1-70b:131072"} <= chunked
    # and the planner's own longest sequences (`--seq-len max`, Unsloth's setup), traced as planned
    # (the setups are the plans the planner makes now: the next test)
    unsloth = "--method qlora --lora-r 32 --lora-targets all-linear --batch 1 --seq-len max"
    assert {f"plan:llama-3.1-8b@a100-80gb@{unsloth}", f"plan:llama-3.1-70b@a100-80gb@{unsloth}",
            f"plan:llama-3.1-70b@a100-80gb@{unsloth} --vram 48GiB"} <= chunked
    for model in ("llama-3.1-8b", "llama-3.1-70b"):
        for seq in (32768, 131072):
            assert f"long-transformers-norm:{model}:{seq}" in cases
    off = []
    for case, est, row in rows:
        device = est.torch_peak_bytes / int(row["trace_peak_bytes"]) - 1
        host = est.host_bytes() / int(row["trace_host_peak_bytes"]) - 1
        if abs(device) > 0.01 or abs(host) > 0.01:
            off.append(f"{case}: device {device:+.2%}, host {host:+.2%}")
    assert not off, off


def test_the_traced_seq_len_max_plans_are_the_plans_the_planner_makes_now():
    """A `plan:` row of the grid stands for what `tuneplan plan` answers: its stored setup is the
    current plan's, but for the accumulation (the trace runs at most two micro-batches per step:
    bench/bench_trace_cuda.py `TRACE_GRAD_ACCUM`; the memory does not depend on it beyond two)."""
    import importlib.util
    import sys
    from dataclasses import replace

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_trace_cuda.py"
    spec = importlib.util.spec_from_file_location("bench_trace_cuda", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_trace_cuda"] = bench
    spec.loader.exec_module(bench)
    with GRID.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["case"].startswith("plan:") and "--seq-len max" in r["case"]]
    assert rows
    for row in rows:
        # what `tuneplan plan` answers now, as the bench traces a `plan:` case
        model, planned, _ = bench.plan_setup(*row["case"][len("plan:"):].split("@"))
        stored = _setup(row)
        assert model == row["model"]
        assert stored == replace(planned, grad_accum=min(planned.grad_accum, bench.TRACE_GRAD_ACCUM)), row["case"]
        spec_ = catalog.load_spec(row["model"])
        full, two = estimate_memory(spec_, planned), estimate_memory(spec_, stored)
        assert (full.torch_peak_bytes, full.host_bytes()) == (two.torch_peak_bytes, two.host_bytes())


def test_the_full_size_cuda_grid_stays_within_the_stated_accuracy():
    errs = _grid_errors()
    assert len(errs) >= 20
    assert statistics.median(abs(e) for e in errs) <= 0.01
    assert max(abs(e) for e in errs) <= 0.05


def test_margins_follow_from_the_measured_error():
    published = [r.error for r in run_all() if r.series == OUR_STACK and r.error is not None]
    trace = _grid_errors()
    assert len(published) >= 3
    for regime in REGIMES.values():
        assert regime.margin == derive_margin(published, trace)
        # the figures the plan quotes are the measured ones: the published one to a tenth of a
        # percent, the trace one as a bound ("at most") that the grid stays under
        assert regime.published_worst == pytest.approx(max(abs(e) for e in published), abs=0.0005)
        assert max(abs(e) for e in trace) <= regime.trace_worst
    assert DEFAULT_SAFETY_MARGIN == REGIMES["single"].margin


def test_the_plan_names_the_regime_of_its_margin():
    from planner.solver import Constraints, Hardware, solve

    spec = catalog.load_spec("llama-3.1-8b")
    gpu = GPU(key="a100", name="A100", memory_bytes=80 * 2**30, bf16=True, arch="ampere")
    result = solve(spec, Hardware(gpu=gpu), Constraints())
    text = " ".join(result.reasons)
    assert margin_sentence(DEFAULT_SAFETY_MARGIN, 1) in text
    assert "published runs" in text
    custom = solve(spec, Hardware(gpu=gpu), Constraints(safety_margin=0.2))
    assert "set by you" in " ".join(custom.reasons)
    assert regime_for(4).key == "multi"
