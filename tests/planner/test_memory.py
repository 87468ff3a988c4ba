"""Behaviour of the memory model (planner/memory.py): structure, mechanisms, emergent effects.

Numbers are never hard-coded here: each test compares the model with itself across a knob,
or with an exact count it must reproduce (bitsandbytes' 4-bit layout, optimizer states).
Accuracy against real steps lives in test_trace_cpu.py (M2) and test_calibration.py.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from planner.memory import estimate_memory
from verification.memory_calibration import setup_and_profile
from planner.setup import COMPONENTS, TENSOR_COMPONENTS, TUNEPLAN_STACK, CalibrationProfile, TrainSetup
from planner.spec import spec_from_config

LLAMA_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                max_position_embeddings=131072, tie_word_embeddings=False, torch_dtype="bfloat16")
# Qwen2.5-0.5B (config.json of Qwen/Qwen2.5-0.5B): tiny body, 151936-token vocabulary, tied
QWEN25_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, tie_word_embeddings=True, torch_dtype="bfloat16")
GEMMA2_2B = dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                 num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                 max_position_embeddings=8192, tie_word_embeddings=True, torch_dtype="bfloat16")


@pytest.fixture(scope="module")
def llama8b():
    return spec_from_config(LLAMA_8B, "llama-3.1-8b")


@pytest.fixture(scope="module")
def qwen05():
    return spec_from_config(QWEN25_05B, "qwen2.5-0.5b")


def test_breakdown_has_every_component_and_totals_add_up(llama8b):
    for setup in (TrainSetup(), TrainSetup(method="qlora", optimizer="paged-adamw-8bit"),
                  TrainSetup(method="full", grad_checkpointing=False, seq_len=512)):
        est = estimate_memory(llama8b, setup)
        assert tuple(est.components) == COMPONENTS
        assert all(isinstance(v, int) and v >= 0 for v in est.components.values())
        paged = est.details.get("optimizer_paged_unified_memory", 0)
        tensor = sum(est.components[c] for c in TENSOR_COMPONENTS)
        # the cuBLAS workspaces come from the caching allocator: max_memory_allocated counts them
        assert est.torch_peak_bytes == tensor - paged + est.details["cublas_workspace"]
        assert est.device_bytes == sum(est.components.values())
        assert est.device_bytes > est.torch_peak_bytes


def test_4bit_weights_follow_bitsandbytes_layout(llama8b):
    lora = estimate_memory(llama8b, TrainSetup())
    q = estimate_memory(llama8b, TrainSetup(method="qlora"))
    q_nodq = estimate_memory(llama8b, TrainSetup(method="qlora", double_quant=False))
    linear = llama8b.linear_params()
    # packed: half a byte per weight; absmax fp32 per 64 (no DQ) vs uint8 per 64 (+ tiny) with DQ
    assert q.details["weights_4bit_packed"] == linear // 2
    assert q_nodq.details["weights_4bit_constants"] == pytest.approx(linear / 64 * 4, rel=0.01)
    assert q.details["weights_4bit_constants"] == pytest.approx(linear / 64 * (1 + 4 / 256), rel=0.01)
    # embeddings/lm_head/norms stay in the compute dtype, nothing upcast
    assert q.components["unquantized_weights"] == (llama8b.parameter_count() - linear) * 2
    assert lora.components["unquantized_weights"] == llama8b.parameter_count() * 2


def test_adapter_dtypes_follow_the_training_path(llama8b):
    lora = estimate_memory(llama8b, TrainSetup(optimizer="adamw"))
    qlora = estimate_memory(llama8b, TrainSetup(method="qlora", optimizer="adamw"))
    n = lora.details["trainable_params"]
    assert n == qlora.details["trainable_params"]
    assert lora.components["adapter_weights"] == 4 * n  # peft fp32 adapters
    assert qlora.components["adapter_weights"] == 2 * n  # trl casts 4-bit models' adapters to bf16
    assert lora.components["optimizer_states"] == 8 * n  # torch AdamW: two states in the param dtype
    fp32 = estimate_memory(llama8b, TrainSetup(method="qlora"), profile=CalibrationProfile(adapter_dtype="float32"))
    assert fp32.components["adapter_weights"] == 4 * n


def test_8bit_and_paged_optimizers(llama8b):
    base = TrainSetup(method="qlora")
    adamw = estimate_memory(llama8b, replace(base, optimizer="adamw")).components["optimizer_states"]
    o8 = estimate_memory(llama8b, replace(base, optimizer="adamw-8bit"))
    paged8 = estimate_memory(llama8b, replace(base, optimizer="paged-adamw-8bit"))
    assert o8.components["optimizer_states"] < adamw
    # paged buffers live outside torch's allocator: same states, lower torch peak, same device total
    assert paged8.components["optimizer_states"] == o8.components["optimizer_states"]
    assert paged8.details["optimizer_paged_unified_memory"] > 0
    assert paged8.torch_peak_bytes < o8.torch_peak_bytes
    assert paged8.device_bytes == o8.device_bytes


def test_checkpointing_trades_activations(llama8b):
    on = estimate_memory(llama8b, TrainSetup(seq_len=4096, fused_ce=True))
    off = estimate_memory(llama8b, TrainSetup(seq_len=4096, fused_ce=True, grad_checkpointing=False))
    assert off.torch_peak_bytes > on.torch_peak_bytes
    assert off.details["per_layer_activations"] > on.details["checkpointed_layer_inputs"] / llama8b.num_layers


def test_memory_grows_with_batch_sequence_rank_and_targets(llama8b):
    base = TrainSetup(fused_ce=True)
    ref = estimate_memory(llama8b, base).torch_peak_bytes
    for knob in (dict(micro_batch=2), dict(seq_len=4096), dict(lora_rank=128)):
        assert estimate_memory(llama8b, replace(base, **knob)).torch_peak_bytes > ref, knob
    attn_only = estimate_memory(llama8b, replace(base, lora_targets=("q_proj", "v_proj"), grad_checkpointing=False))
    all_lin = estimate_memory(llama8b, replace(base, grad_checkpointing=False))
    assert attn_only.components["saved_activations"] < all_lin.components["saved_activations"]


def test_qlora_not_always_smaller_than_lora_for_small_model_large_vocab(qwen05, llama8b):
    # emerges from: the 4-bit matmuls only shrink the decoder weights; the activations, the
    # vocabulary-sized embedding (kept 16-bit) and the logits/loss do not shrink at all, and
    # the dequantized weights add transients
    for setup in (TrainSetup(grad_checkpointing=False, seq_len=2048, micro_batch=4),):
        lora = estimate_memory(qwen05, setup)
        qlora = estimate_memory(qwen05, replace(setup, method="qlora"))
        saving = lora.torch_peak_bytes - qlora.torch_peak_bytes
        assert saving < 0.1 * lora.torch_peak_bytes
    big = TrainSetup(seq_len=2048)
    assert estimate_memory(llama8b, replace(big, method="qlora")).torch_peak_bytes < \
        0.6 * estimate_memory(llama8b, big).torch_peak_bytes


def test_logits_dominate_long_sequences_with_large_vocab_and_fused_ce_removes_them(llama8b):
    setup = TrainSetup(method="qlora", seq_len=16384, fused_ce=False)
    est = estimate_memory(llama8b, setup)
    loss_items = est.details["loss_fp32_logits"]
    # every other tensor item (the transient peak holds the loss items themselves; the
    # allocator overhead is not a tensor)
    others = {k: v for k, v in est.components.items() if k in TENSOR_COMPONENTS and k != "transient_peak"}
    assert loss_items > max(others.values())
    assert any("fused cross-entropy" in n for n in est.notes)
    fused = estimate_memory(llama8b, replace(setup, fused_ce=True))
    assert fused.torch_peak_bytes < 0.6 * est.torch_peak_bytes
    assert fused.details["fused_ce_chunk"] < 0.1 * loss_items


def test_gemma2_forces_eager_quadratic_attention():
    spec = spec_from_config(GEMMA2_2B, "gemma-2-2b")
    s1 = estimate_memory(spec, TrainSetup(seq_len=2048, grad_checkpointing=False, fused_ce=True, attn="sdpa"))
    s2 = estimate_memory(spec, TrainSetup(seq_len=4096, grad_checkpointing=False, fused_ce=True, attn="sdpa"))
    assert any("eager" in n for n in s1.notes)
    a1, a2 = s1.components["saved_activations"], s2.components["saved_activations"]
    assert a2 > 2.5 * a1  # more than linear in the sequence length
    llama_like = spec_from_config({**GEMMA2_2B, "model_type": "llama", "head_dim": 256}, "x")
    l1 = estimate_memory(llama_like, TrainSetup(seq_len=2048, grad_checkpointing=False, fused_ce=True, packing=False))
    l2 = estimate_memory(llama_like, TrainSetup(seq_len=4096, grad_checkpointing=False, fused_ce=True, packing=False))
    assert l2.components["saved_activations"] < 2.2 * l1.components["saved_activations"]


def test_hopper_gets_the_larger_cublas_workspace(llama8b):
    from planner.gpus import GPU

    h100 = GPU(key="h100", name="H100", memory_bytes=80 * 2**30, bf16=True, arch="hopper")
    a100 = GPU(key="a100", name="A100", memory_bytes=80 * 2**30, bf16=True, arch="ampere")
    e_h = estimate_memory(llama8b, TrainSetup(), h100)
    e_a = estimate_memory(llama8b, TrainSetup(), a100)
    # ":4096:8" KiB on sm90, one workspace for the forward thread and one for the backward's
    assert e_h.details["cublas_workspace"] == 2 * 4 * 1024 * 4096 * 2
    assert e_a.details["cublas_workspace"] < e_h.details["cublas_workspace"]
    # allocated through the caching allocator: in max_memory_allocated
    assert e_h.torch_peak_bytes - e_a.torch_peak_bytes == \
        e_h.details["cublas_workspace"] - e_a.details["cublas_workspace"]


def test_one_estimate_is_fast(llama8b):
    setup = TrainSetup()
    estimate_memory(llama8b, setup)
    t = time.perf_counter()
    for _ in range(50):
        estimate_memory(llama8b, setup)
    assert (time.perf_counter() - t) / 50 < 0.02  # generous bound; bench/ prints the real figure


def test_cpu_variant_differs_only_where_the_kernels_differ(llama8b):
    # CUDA's fused dropout saves a bool mask, the CPU saves a noise tensor of the input dtype;
    # trl's chunked head folds tiles with fp32 torch ops without Triton
    setup = TrainSetup(grad_checkpointing=False, fused_ce=False)
    cuda = estimate_memory(llama8b, setup)
    cpu = estimate_memory(llama8b, setup, device="cpu")
    assert cpu.components["saved_activations"] > cuda.components["saved_activations"]
    nodrop = replace(setup, lora_dropout=0.0)
    assert estimate_memory(llama8b, nodrop, device="cpu").components["saved_activations"] == \
        estimate_memory(llama8b, nodrop).components["saved_activations"]
    fused = replace(setup, fused_ce=True)
    assert estimate_memory(llama8b, fused, device="cpu").details["phase_loss_backward"] > \
        estimate_memory(llama8b, fused).details["phase_loss_backward"]


def test_packed_sdpa_block_mask_is_quadratic_and_flash_avoids_it(qwen05):
    packed = TrainSetup(micro_batch=8, grad_checkpointing=False, fused_ce=True, packing=True)
    est = estimate_memory(qwen05, packed)
    assert any("block mask" in n for n in est.notes)
    flash = estimate_memory(qwen05, replace(packed, attn="flash"))
    assert flash.components["saved_activations"] < est.components["saved_activations"]
    assert not any("block mask" in n for n in flash.notes)


# -- other stacks' mechanisms (litgpt; used by the calibration, defaults = our path) ----------
LITGPT = dict(compute_dtype="bfloat16", autocast=False, adapter_dtype="bfloat16", lora_dropout=0.05,
              grad_checkpointing=False, attn="flash", packing=False, loss_impl="chunked",
              lora_qkv_fused=True, micro_batch=2, seq_len=512, lora_rank=8, lora_targets=("q_proj", "v_proj"))
LLAMA2_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=32,
                 max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="bfloat16")


def _peak(spec, **fields):
    setup, profile = setup_and_profile({**LITGPT, **fields})
    return estimate_memory(spec, setup, padded_rows=False, profile=profile)


def test_stack_fields_default_to_our_path(llama8b):
    base = TrainSetup()
    explicit = CalibrationProfile(untie_embeddings=False, fused_qkv=False, bnb_dequant_fp16=False)
    assert explicit == TUNEPLAN_STACK
    assert estimate_memory(llama8b, base, profile=explicit) == estimate_memory(llama8b, base)


def test_untied_embeddings_add_one_head_copy_only_for_tied_models(qwen05, llama8b):
    for spec in (qwen05, llama8b):
        tied = _peak(spec)
        untied = _peak(spec, untie_embeddings=True)
        extra = untied.components["unquantized_weights"] - tied.components["unquantized_weights"]
        assert extra == (spec.vocab_size * spec.hidden_size * 2 if spec.tie_word_embeddings else 0)
    # under QLoRA with a quantized head the copy is 4-bit
    q = _peak(qwen05, method="qlora", quantize_lm_head=True, untie_embeddings=True)
    assert 0 < q.details["lm_head_4bit"] < qwen05.vocab_size * qwen05.hidden_size


def test_fused_qkv_view_keeps_qkv_alive_only_with_one_query_per_kv_head(llama8b):
    mha = spec_from_config(LLAMA2_7B, "llama-2-7b-4l")
    T, L = 2 * 512, mha.num_layers
    grown = _peak(mha, fused_qkv=True).components["saved_activations"] - _peak(mha).components["saved_activations"]
    assert grown == L * T * 2 * mha.hidden_size * 2  # the q and k parts of each layer's q/k/v output (bf16)
    # grouped-query attention copies k/v when it expands them: no view, nothing kept
    assert _peak(llama8b, fused_qkv=True).torch_peak_bytes == _peak(llama8b).torch_peak_bytes


def test_zero_pad_index_copy_saves_its_source_only_for_partial_qkv():
    mha = spec_from_config(LLAMA2_7B, "llama-2-7b-4l")
    T, L, h, r = 2 * 512, mha.num_layers, mha.hidden_size, LITGPT["lora_rank"]
    qv = _peak(mha).components["saved_activations"]
    qkv = _peak(mha, lora_targets=("q_proj", "k_proj", "v_proj")).components["saved_activations"]
    # adapting k as well removes the index_copy source (q + v outputs, bf16) and adds r columns
    # to the shared lora_A output
    assert qv - qkv == L * T * (2 * (h + h) - 2 * r)
    # peft's separate projections have no zero_pad
    sep_qv = _peak(mha, lora_qkv_fused=False).components["saved_activations"]
    sep_qkv = _peak(mha, lora_qkv_fused=False, lora_targets=("q_proj", "k_proj", "v_proj")).components["saved_activations"]
    assert sep_qv < sep_qkv


def test_fabric_fp32_logits_double_the_chunked_loss(llama8b):
    bf16 = _peak(llama8b, loss_upcast=False)
    fp32 = _peak(llama8b, loss_upcast=True)
    assert fp32.details["logits"] == 2 * bf16.details["logits"]
    assert fp32.torch_peak_bytes > bf16.torch_peak_bytes


def test_fp16_quant_state_doubles_the_dequantization_transient(llama8b):
    q = dict(method="qlora", quantize_lm_head=True, bnb_saves_input=True, optimizer="paged-adamw-32bit")
    one = _peak(llama8b, **q)
    two = _peak(llama8b, **q, bnb_dequant_fp16=True)
    assert two.details["dequantized_weight"] == 2 * one.details["dequantized_weight"]
    assert two.torch_peak_bytes >= one.torch_peak_bytes


def test_gemma2_eager_activations_are_linear_in_the_micro_batch():
    # eager scores are b x heads x s x s: packed runs with eager attention use trl's wrapped
    # rows, never one flattened (b*s)^2 row (tuneplan/training/sft.py `packing_strategy`)
    from tuneplan.training.sft import packing_strategy

    spec = spec_from_config(GEMMA2_2B, "gemma-2-2b")
    act = {}
    for b in (1, 2, 3, 4, 8):
        setup = TrainSetup(seq_len=2048, micro_batch=b, grad_checkpointing=False, packing=True)
        act[b] = estimate_memory(spec, setup).components["saved_activations"]
        assert packing_strategy(setup, "eager") == ("wrapped" if b > 1 else "bfd")
        assert packing_strategy(setup, "sdpa") == "bfd"
    per_row = act[2] - act[1]
    for b in (3, 4, 8):
        assert act[b] - act[1] == pytest.approx((b - 1) * per_row, rel=1e-6)
