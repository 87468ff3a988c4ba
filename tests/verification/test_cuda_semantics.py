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


_LONG = replace(SMALL_SETUP, method="qlora", micro_batch=1, seq_len=1024, grad_checkpointing=True, fused_ce=True,
                lora_targets="all-linear", lora_dropout=0.0)


def test_offloaded_layer_inputs_leave_the_card_and_are_counted_in_host_ram():
    """`offload`: trl's own pack/unpack hooks move each checkpointed layer input (and what the
    head saves) into host RAM; the device keeps what trl's stash keeps. Without the mechanism
    (the CPU's single-stream manager) the copies stay in the one memory."""
    from trace_models import FAMILIES
    from verification.cuda_semantics import MECHANISMS

    cfg = FAMILIES["llama"]
    layers, hidden, tokens = cfg["num_hidden_layers"], cfg["hidden_size"], _LONG.seq_len
    plain = _trace("llama", _LONG, semantics="cuda", arch="hopper")
    off = _trace("llama", replace(_LONG, offload_activations=True), semantics="cuda", arch="hopper")
    layer_input = tokens * hidden * 2  # bf16
    assert plain.host_peak_bytes == 0
    # every layer input in pinned host RAM (a power of two each), and the head's tensors
    assert off.host_peak_bytes >= layers * layer_input
    assert off.peak_bytes <= plain.peak_bytes
    cpu_side = _cuda("llama", replace(_LONG, offload_activations=True), *[m for m in MECHANISMS if m != "offload"],
                     arch="hopper")
    assert cpu_side.host_peak_bytes == 0


def test_the_tiled_mlp_runs_its_real_code_in_the_trace():
    """With checkpointing off a layer saves its MLP's intermediates; tiled, it saves only the
    MLP input (the shards run under no_grad), so the activations left at the end of the
    forward shrink by at least the gate/up/act tensors of every layer."""
    from trace_models import FAMILIES

    cfg = FAMILIES["llama"]
    setup = replace(_LONG, grad_checkpointing=False)
    plain = _trace("llama", setup, semantics="cuda", arch="hopper")
    tiled = _trace("llama", replace(setup, tiled_mlp=True), semantics="cuda", arch="hopper")
    assert any("tiled MLP" in n for n in tiled.meta["notes"])
    end = "step2.forward_end"
    intermediates = cfg["num_hidden_layers"] * 3 * setup.seq_len * cfg["intermediate_size"] * 2
    assert plain.marks[end]["forward"] - tiled.marks[end]["forward"] >= intermediates


def test_the_chunked_norm_runs_its_real_code_in_the_trace():
    """With checkpointing off transformers' RMSNorm saves an fp32 copy of its input (4 bytes a
    value); the chunked one its input (2) and one fp32 value per position: the activations left
    at the end of the forward shrink by about 2 bytes per value of every layer's two norms."""
    from trace_models import FAMILIES

    cfg = FAMILIES["llama"]
    setup = replace(_LONG, grad_checkpointing=False)
    plain = _trace("llama", setup, semantics="cuda", arch="hopper")
    chunked = _trace("llama", replace(setup, chunked_norm=True), semantics="cuda", arch="hopper")
    assert any("chunked RMSNorm" in n for n in chunked.meta["notes"])
    end = "step2.forward_end"
    values = cfg["num_hidden_layers"] * setup.seq_len * cfg["hidden_size"]
    saved = plain.marks[end]["forward"] - chunked.marks[end]["forward"]
    assert values * 2 <= saved <= values * 2 * 2  # two norms a layer, minus what chunked keeps in bf16


def test_paged_optimizer_states_leave_the_peak():
    """`paged`: bitsandbytes keeps the paged optimizer's state of every tensor of 1e5 elements
    or more in CUDA managed memory, outside the caching allocator's peak (LoRA r32 on a hidden
    size of 4096: A and B are 131,072 elements each)."""
    from trace_models import FAMILIES
    from verification.cuda_semantics import MECHANISMS
    from verification.memory_trace import trace_fake

    cfg = dict(FAMILIES["llama"], hidden_size=4096, intermediate_size=4096, num_hidden_layers=1,
               num_attention_heads=32, num_key_value_heads=8)
    setup = replace(_S, method="lora", optimizer="paged-adamw-8bit", lora_rank=32, lora_targets=("q_proj",),
                    seq_len=64, micro_batch=1)
    on = trace_fake(cfg, setup, semantics="cuda", arch="hopper")
    off = trace_fake(cfg, setup, semantics="cuda", arch="hopper", mechanisms=[m for m in MECHANISMS if m != "paged"])
    assert off.unified_peak_bytes == 0 and on.unified_peak_bytes > 0
    assert off.static["optimizer_states"] - on.static["optimizer_states"] == on.unified_peak_bytes


def test_the_host_embedding_table_leaves_the_device_for_pageable_host_ram():
    """`embed_host`: with `offload_embedding` the input embedding table (a 64k vocabulary on a
    hidden size of 256: 32 MiB in bf16) is moved by `build_fake_model` -> `prepare_for_training`
    to the host; every phase's device peak drops by exactly its bytes, and host RAM holds the
    table plus, while the embedding runs, the ids' host copy (8 bytes a token) and the looked-up
    rows (tokens x hidden x 2), counted exactly (pageable memory: no power-of-two rounding).
    Without the mechanism (the CPU, where the host is the device) nothing moves."""
    from trace_models import FAMILIES
    from verification.cuda_semantics import MECHANISMS
    from verification.memory_trace import trace_fake

    cfg = dict(FAMILIES["llama"], vocab_size=65536)
    setup = replace(SMALL_SETUP, method="lora", grad_checkpointing=True)
    b, s, hidden = setup.micro_batch, setup.seq_len, cfg["hidden_size"]
    table = cfg["vocab_size"] * hidden * 2
    plain = trace_fake(cfg, setup, semantics="cuda", arch="hopper")
    host = trace_fake(cfg, replace(setup, offload_embedding=True), semantics="cuda", arch="hopper")
    assert any(n.startswith("embedding offload: the input embedding table") for n in host.meta["notes"])
    assert plain.host_peak_bytes == 0
    assert host.peak_bytes == plain.peak_bytes - table
    assert {k: v["total"] + table for k, v in host.phases.items()} == {k: v["total"] for k, v in plain.phases.items()}
    assert host.static["unquantized_weights"] == plain.static["unquantized_weights"] - table
    assert host.host_peak_bytes == table + b * s * 8 + b * s * hidden * 2
    cpu_side = trace_fake(cfg, replace(setup, offload_embedding=True), semantics="cuda", arch="hopper",
                          mechanisms=[m for m in MECHANISMS if m != "embed_host"])
    assert cpu_side.host_peak_bytes == 0 and cpu_side.peak_bytes == plain.peak_bytes
