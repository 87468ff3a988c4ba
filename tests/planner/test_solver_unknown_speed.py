"""A memory size without a card (speed unknown): the solver does not call micro-batch 1 "the
fastest"; it takes the largest micro-batch that fits and says so."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.catalog import load_spec
from planner.gpus import GPU, GiB
from planner.parallel import estimate_parallel_memory
from planner.solver import DEFAULT_SAFETY_MARGIN, Constraints, Hardware, solve


@pytest.mark.parametrize("model, gib", [("qwen2.5-32b", 48), ("llama-3.1-8b", 24), ("qwen2.5-7b", 16)])
def test_largest_micro_batch_that_fits_when_speed_is_unknown(model, gib):
    spec = load_spec(model)
    gpu = GPU(key="custom", name=f"a {gib} GiB GPU", memory_bytes=gib * GiB, bf16=True, arch="unknown")
    r = solve(spec, Hardware(gpu=gpu, source="vram"), Constraints())
    assert r.fits and r.choice.throughput.tokens_per_second is None
    s = r.choice.setup
    # the next micro-batch up (same effective batch, same knobs otherwise) does not fit
    if s.grad_accum > 1:
        bigger = replace(s, micro_batch=s.micro_batch * 2, grad_accum=s.grad_accum // 2)
        need = estimate_parallel_memory(spec, bigger, gpu).device_bytes
        assert need > int(gib * GiB * (1 - DEFAULT_SAFETY_MARGIN)), (s, bigger)
    text = " ".join(r.reasons)
    assert "fastest" not in text and "largest micro-batch that fits" in text and "unknown" in text


def test_a_known_card_still_ranks_by_speed():
    from planner.gpus import get_gpu

    r = solve(load_spec("llama-3.1-8b"), Hardware(gpu=get_gpu("rtx-4090")), Constraints())
    assert r.choice.throughput.tokens_per_second
    assert "fastest micro-batch that fits" in " ".join(r.reasons)
