"""The planner against the CUDA-semantics trace (verification/cuda_semantics.py) of small
models of several families (the full-size grid is bench/bench_trace_cuda.py). That the CUDA
trace differs from the CPU trace by its named mechanisms only, each doing what a CUDA run
does, is tests/verification/test_cuda_semantics.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from planner.gpus import GPU  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402
from planner.spec import spec_from_config  # noqa: E402
from trace_models import FAMILIES as _FAMILIES  # noqa: E402
from trace_models import SMALL_SETUP, few_threads  # noqa: E402, F401  (the one-thread autouse fixture)

# a sliding-window model whose window the sequence reaches: SDPA's masked (memory-efficient) path
FAMILIES = {**_FAMILIES, "gemma3_sliding": {**_FAMILIES["gemma3_text"], "sliding_window": 64,
                                            "layer_types": ["sliding_attention", "full_attention"]}}

pytestmark = pytest.mark.slow

_S = replace(SMALL_SETUP, grad_checkpointing=False)
AMPERE = GPU(key="a100", name="A100", memory_bytes=80 * 2**30, bf16=True, arch="ampere")


def _trace(family, setup, **kw):
    from verification.memory_trace import trace_fake

    return trace_fake(FAMILIES[family], setup, **kw)


CASES = [
    ("llama", replace(_S, method="lora")),
    ("llama", replace(_S, method="qlora")),
    ("llama", replace(_S, method="lora", grad_checkpointing=True)),
    ("llama", replace(_S, method="lora", lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))),
    ("qwen2", replace(_S, method="lora", micro_batch=4)),
    ("mixtral", replace(_S, method="qlora")),
    ("gemma2", replace(_S, method="lora")),
    ("phi3", replace(_S, method="qlora", grad_checkpointing=True)),
    ("gemma3_sliding", replace(_S, method="lora")),
    ("gemma3_sliding", replace(_S, method="lora", grad_checkpointing=True)),
    ("llama", replace(_S, method="lora", packing=True)),
]


@pytest.mark.parametrize("family,setup", CASES, ids=[f"{f}-{s.method}-b{s.micro_batch}-"
                                                      f"{'ckpt' if s.grad_checkpointing else 'nockpt'}-"
                                                      f"{'all' if isinstance(s.lora_targets, str) else 'attn'}"
                                                      f"{'-packed' if s.packing else ''}"
                                                      for f, s in CASES])
def test_planner_predicts_the_cuda_trace(family, setup):
    result = _trace(family, setup, semantics="cuda", arch="ampere")
    pred = estimate_memory(spec_from_config(FAMILIES[family], family), setup, AMPERE, padded_rows=setup.packing)
    err = pred.torch_peak_bytes / result.peak_bytes - 1
    assert abs(err) <= 0.02, (f"predicted {pred.torch_peak_bytes:,} B, traced {result.peak_bytes:,} B ({err:+.2%}) "
                              f"at {result.peak_where}; traced {result.peak_breakdown}; predicted {pred.components}")
