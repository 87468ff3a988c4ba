"""The CUDA-semantics trace (tuneplan/training/cuda_semantics.py) and the planner against it.

The CUDA trace is the CPU fake trace plus a named list of mechanisms. These tests show that
it differs from the CPU trace by those mechanisms only (all switched off: byte for byte the
CPU trace), that each one does what a CUDA run does, and that the planner predicts the CUDA
trace of small models of several families (the full-size grid is bench/bench_trace_cuda.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from planner.gpus import GPU  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402
from planner.setup import TrainSetup  # noqa: E402
from planner.spec import spec_from_config  # noqa: E402

from test_trace_cpu import FAMILIES as _FAMILIES  # noqa: E402
from test_trace_cpu import _few_threads  # noqa: E402, F401  (the same one-thread autouse fixture)

# a sliding-window model whose window the sequence reaches: SDPA's masked (memory-efficient) path
FAMILIES = {**_FAMILIES, "gemma3_sliding": {**_FAMILIES["gemma3_text"], "sliding_window": 64,
                                            "layer_types": ["sliding_attention", "full_attention"]}}

pytestmark = pytest.mark.slow

_S = TrainSetup(seq_len=128, micro_batch=2, lora_rank=16, packing=False, optimizer="adamw",
                grad_checkpointing=False)
AMPERE = GPU(key="a100", name="A100", memory_bytes=80 * 2**30, bf16=True, arch="ampere")


def _trace(family, setup, **kw):
    from tuneplan.training.trace import trace_fake

    return trace_fake(FAMILIES[family], setup, **kw)


def _cuda(family, setup, *mechanisms, arch="ampere"):
    return _trace(family, setup, semantics="cuda", arch=arch, mechanisms=mechanisms)


def test_without_its_mechanisms_the_cuda_trace_is_the_cpu_trace():
    setup = replace(_S, method="lora")
    cpu = _trace("llama", setup)
    bare = _cuda("llama", setup)
    assert bare.peak_bytes == cpu.peak_bytes
    assert bare.phases == cpu.phases
    assert bare.marks == cpu.marks


def test_each_mechanism_changes_only_what_it_names():
    from tuneplan.training.cuda_semantics import cublas_workspace_bytes

    setup = replace(_S, method="lora")
    cpu = _trace("llama", setup)
    end = "step2.forward_end"
    # the fused CUDA dropout saves a bool mask instead of the CPU's fp32 noise tensor
    drop = _cuda("llama", setup, "dropout")
    assert drop.marks[end]["forward"] < cpu.marks[end]["forward"]
    assert {k: v for k, v in drop.marks[end].items() if k not in ("forward", "total")} == \
        {k: v for k, v in cpu.marks[end].items() if k not in ("forward", "total")}
    # two cuBLAS workspaces (forward thread, autograd thread), kept to the end
    ws = _cuda("llama", setup, "cublas")
    assert ws.peak_bytes - cpu.peak_bytes == 2 * cublas_workspace_bytes("ampere")
    # foreach AdamW: a temporary for every state at once (`_foreach_sqrt`), where the CPU's
    # per-tensor loop holds the temporaries of one tensor at a time
    fe = _cuda("llama", setup, "foreach")
    adapters = cpu.static["adapter_weights"]
    grown = fe.phases["step2.optimizer"]["total"] - cpu.phases["step2.optimizer"]["total"]
    assert adapters / 2 < grown <= adapters
    # SDPA by the CUDA rules: flash for bf16 without a mask, with GQA; saved tensors change
    sd = _cuda("llama", setup, "sdpa")
    assert sd.meta["sdpa_backends"] == ["flash"]
    assert sd.marks[end]["forward"] != cpu.marks[end]["forward"]


def test_sdpa_routing_follows_the_cuda_rules():
    from tuneplan.training.cuda_semantics import sdpa_backend

    def t(b, h, s, d, dtype=torch.bfloat16):
        return torch.empty(b, h, s, d, dtype=dtype, device="meta")

    q, kv = t(1, 8, 64, 64), t(1, 2, 64, 64)
    assert sdpa_backend(q, kv, kv, None, 0.0, True, True, "hopper") == "flash"
    mask = torch.empty(1, 1, 64, 64, dtype=torch.bool, device="meta")
    full = t(1, 8, 64, 64)
    assert sdpa_backend(q, full, full, mask, 0.0, False, False, "hopper") == "efficient"  # mask, heads match
    assert sdpa_backend(q, kv, kv, mask, 0.0, False, True, "hopper") == "math"  # mask and GQA
    q32, kv32 = t(1, 8, 64, 64, torch.float32), t(1, 2, 64, 64, torch.float32)
    assert sdpa_backend(q32, kv32, kv32, None, 0.0, True, True, "hopper") == "math"  # fp32 + GQA
    big = t(1, 8, 64, 320)
    assert sdpa_backend(big, big, big, None, 0.0, True, False, "hopper") == "efficient"  # head dim > 256


def test_bnb_dequantizes_the_whole_weight_above_the_fused_kernel_limit():
    from tuneplan.training.cuda_semantics import bnb_dequantizes

    assert bnb_dequantizes(2048, 4096, 4096, 64, torch.bfloat16, "hopper")  # > 1536 rows
    assert not bnb_dequantizes(4, 4096, 4096, 64, torch.bfloat16, "hopper")  # the fused kernel


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
