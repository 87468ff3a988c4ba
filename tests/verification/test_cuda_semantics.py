"""The CUDA-semantics trace (verification/cuda_semantics.py): the CPU fake trace plus a named
list of mechanisms. With all of them switched off it is the CPU trace byte for byte, and each
one changes only what it names, the way a CUDA run does.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from trace_models import FAMILIES, SMALL_SETUP, few_threads  # noqa: E402, F401  (autouse fixture)

pytestmark = pytest.mark.slow

_S = replace(SMALL_SETUP, grad_checkpointing=False)


def _trace(family, setup, **kw):
    from verification.memory_trace import trace_fake

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
    from verification.cuda_semantics import cublas_workspace_bytes

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
    from verification.cuda_semantics import sdpa_backend

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
    from verification.cuda_semantics import bnb_dequantizes

    assert bnb_dequantizes(2048, 4096, 4096, 64, torch.bfloat16, "hopper")  # > 1536 rows
    assert not bnb_dequantizes(4, 4096, 4096, 64, torch.bfloat16, "hopper")  # the fused kernel
