"""Throughput, time and cost: FLOP relations, the roofline's behaviour, and the calibration
against published figures (rows of shared/data/measured.csv, carried in CALIBRATION)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from planner.catalog import load_spec
from planner.gpus import GPU, get_gpu
from planner.setup import TrainSetup
from planner.throughput import (
    CALIBRATION,
    estimate_throughput,
    flops_per_token,
    trainable_parameters,
    training_cost,
    training_seconds,
)


@pytest.fixture(scope="module")
def llama8b():
    return load_spec("llama-3.1-8b")


def _matmul_params(spec) -> float:
    """N of the 2N rule: every matmul weight a token passes through (incl. the lm_head)."""
    n = spec.vocab_size * spec.hidden_size
    for layer in spec.layers:
        for m in layer:
            n += m.in_features * m.out_features * (m.active if m.kind == "expert" else m.count)
    return n


def tps(spec, setup, gpu):
    return estimate_throughput(spec, setup, get_gpu(gpu)).tokens_per_second


def test_full_fine_tuning_is_six_n_per_token_plus_attention(llama8b):
    s = TrainSetup(method="full", seq_len=2048, grad_checkpointing=False)
    f = flops_per_token(llama8b, s)
    n = _matmul_params(llama8b)
    assert f.total() - 3.5 * f.attention_forward == pytest.approx(6 * n, rel=1e-9)
    assert f.forward - f.attention_forward == pytest.approx(2 * n, rel=1e-9)


def test_lora_backward_is_input_gradients_only(llama8b):
    n = _matmul_params(llama8b)
    lora = flops_per_token(llama8b, TrainSetup(method="lora", grad_checkpointing=False))
    full = flops_per_token(llama8b, TrainSetup(method="full", grad_checkpointing=False))
    adapters = lora.forward - lora.attention_forward - 2 * n
    assert 0 < adapters < 0.02 * n  # r=16 adapters are ~1% of the base matmuls
    assert lora.backward == pytest.approx(2 * n + 2.5 * lora.attention_forward + 2 * adapters, rel=1e-9)
    assert lora.total() < 0.7 * full.total()


def test_checkpointing_recomputes_the_decoder_forward(llama8b):
    off = flops_per_token(llama8b, TrainSetup(grad_checkpointing=False))
    on = flops_per_token(llama8b, TrainSetup(grad_checkpointing=True))
    head = 2 * llama8b.vocab_size * llama8b.hidden_size
    assert on.recompute == pytest.approx(off.forward - head, rel=1e-9)  # lm_head is not recomputed
    assert off.recompute == 0


def test_attention_flops_grow_with_sequence_and_eager_computes_the_full_square(llama8b):
    a = flops_per_token(llama8b, TrainSetup(seq_len=1024)).attention_forward
    b = flops_per_token(llama8b, TrainSetup(seq_len=4096)).attention_forward
    assert b == pytest.approx(4 * a, rel=0.01)  # per token: linear in s (causal half)
    eager = flops_per_token(llama8b, TrainSetup(seq_len=4096, attn="eager")).attention_forward
    assert eager == pytest.approx(2 * b, rel=0.01)


def test_sliding_window_layers_attend_to_at_most_the_window():
    gemma3 = load_spec("gemma-3-12b")
    assert gemma3.sliding_window and "sliding_attention" in gemma3.layer_types
    long = flops_per_token(gemma3, TrainSetup(seq_len=32768)).attention_forward
    full_layers = gemma3.layer_types.count("full_attention")
    no_window = 4 * (32769 / 2) * gemma3.num_heads * gemma3.head_dim * gemma3.num_layers
    assert long < no_window
    assert long > 4 * (32769 / 2) * gemma3.num_heads * gemma3.head_dim * full_layers


def test_qlora_is_slower_than_lora_and_the_gap_shrinks_with_bigger_micro_batches(llama8b):
    def ratio(mb):
        lora = tps(llama8b, TrainSetup(method="lora", micro_batch=mb, seq_len=512), "a100-80gb")
        qlora = tps(llama8b, TrainSetup(method="qlora", micro_batch=mb, seq_len=512), "a100-80gb")
        return lora / qlora

    assert ratio(1) > ratio(8) > 1.0


def test_faster_cards_train_faster(llama8b):
    s = TrainSetup(method="qlora", micro_batch=2)
    order = ["rtx-3060-12gb", "rtx-3090", "rtx-4090", "a100-80gb", "h100-sxm", "b200"]
    speeds = [tps(llama8b, s, g) for g in order]
    assert speeds == sorted(speeds)


def test_tiny_micro_batches_are_less_efficient():
    spec = load_spec("qwen2.5-0.5b")
    mfu = [estimate_throughput(spec, TrainSetup(micro_batch=mb, seq_len=512, grad_checkpointing=False),
                               get_gpu("h100")).mfu for mb in (1, 4, 16)]
    assert mfu[0] < mfu[1] < mfu[2]


def test_checkpointing_costs_speed(llama8b):
    assert tps(llama8b, TrainSetup(grad_checkpointing=True), "h100") < tps(llama8b, TrainSetup(grad_checkpointing=False), "h100")


def test_grad_accumulation_amortises_the_optimizer_step():
    spec = load_spec("qwen2.5-0.5b")
    s = TrainSetup(method="full", micro_batch=1, seq_len=512, grad_checkpointing=False)
    assert tps(spec, replace(s, grad_accum=16), "h100") > tps(spec, s, "h100")


def test_unknown_rates_give_none(llama8b):
    gpu = GPU(key="custom", name="mystery", memory_bytes=24 * 1024**3, bf16=True, arch="unknown")
    t = estimate_throughput(llama8b, TrainSetup(), gpu)
    assert t.tokens_per_second is None and t.mfu is None


def test_trainable_parameters(llama8b):
    assert trainable_parameters(llama8b, TrainSetup(method="full")) == llama8b.parameter_count()
    # LoRA r on q_proj (4096 -> 4096) of 32 layers: r * (in + out) per layer
    s = TrainSetup(lora_rank=8, lora_targets=("q_proj",))
    assert trainable_parameters(llama8b, s) == 32 * 8 * (4096 + 4096)


def test_time_and_cost_arithmetic():
    assert training_seconds(1000.0, 3_600_000, epochs=2) == pytest.approx(7200.0)
    assert training_cost(7200.0, 1.5, num_gpus=2) == pytest.approx(6.0)
    assert training_seconds(None, 10) is None and training_cost(None, 1.0) is None
    assert training_cost(3600.0, None) is None


# -- calibration against published throughput ----------------------------------------------------
# Tolerance, stated: the well-specified fsdp_qlora rows (fixed-length data, pure bf16) read
# ~30% above the model and the LLaMA-Factory rows (padded Alpaca batches) ~25-30% below it;
# sources disagree by that much. Each row within a factor of 1.45, and the geometric mean of
# predicted/published within 15%.
def test_calibration_rows_within_stated_tolerance():
    ratios = []
    for point in CALIBRATION:
        predicted = tps(load_spec(point.model), point.setup, point.gpu)
        ratio = predicted / point.tokens_per_second
        ratios.append(ratio)
        assert 1 / 1.45 < ratio < 1.45, (point.row, predicted, point.tokens_per_second)
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert 0.87 < geo < 1.15, ratios


def test_eager_attention_is_slower_than_flash_at_long_sequences():
    spec = load_spec("llama-3.1-8b")
    s = TrainSetup(micro_batch=1, seq_len=8192)
    assert tps(spec, replace(s, attn="eager"), "a100-80gb") < 0.8 * tps(spec, replace(s, attn="flash"), "a100-80gb")


def test_qlora_over_lora_time_ratio_matches_litgpt_table():
    # litgpt resource tables (A100 40GB, micro-batch 1, Alpaca ~300 tokens, q+v r=8):
    # M011/M012 (Llama-2-7B) 2.36 -> 3.68 min per 1k iters = 1.56x; M016/M017 (13B) 3.19 -> 6.38 = 2.0x.
    for model, published in (("llama-2-7b", 1.56), ("llama-2-13b", 2.0)):
        spec = load_spec(model)
        s = TrainSetup(lora_rank=8, lora_targets=("q_proj", "v_proj"), micro_batch=1, seq_len=300, grad_checkpointing=False)
        r = tps(spec, replace(s, method="lora"), "a100-40gb") / tps(spec, replace(s, method="qlora"), "a100-40gb")
        assert published / 1.35 < r < published * 1.35, (model, r)


def test_long_sequences_slow_down_like_published():
    # fsdp_qlora Mistral-7B QLoRA on RTX 4090s (M119/M120): 1615 tok/s at 24576 tokens vs
    # 2200 tok/s at 2048 (ratio 0.73): attention FLOPs grow with the sequence length.
    spec = load_spec("mistral-7b-v0.3")  # v0.2/v0.3: no sliding window, like the run
    short = tps(spec, TrainSetup(method="qlora", lora_rank=64, micro_batch=12, seq_len=2048), "rtx-4090")
    long = tps(spec, TrainSetup(method="qlora", lora_rank=64, micro_batch=1, seq_len=24576), "rtx-4090")
    assert 0.73 - 0.12 < long / short < 0.73 + 0.12


def test_hf_stack_is_not_predicted_faster_than_compiled_torchtune():
    # torchtune's compiled single-device recipes on an RTX 4090 (M080, M082, M084) are an
    # upper bound for the eager HF/PEFT path.
    spec = load_spec("llama-3.1-8b")
    for method, published in (("full", 1650), ("lora", 3083), ("qlora", 2413)):
        s = TrainSetup(method=method, lora_rank=8, micro_batch=2, seq_len=2048, grad_checkpointing=True)
        assert tps(spec, s, "rtx-4090") < 1.1 * published, method


def test_moe_adapters_count_like_peft_and_tokens_see_only_routed_experts():
    from planner.spec import resolve_lora_targets

    spec = load_spec("qwen3-30b-a3b")
    s = TrainSetup(lora_rank=16)
    expected = sum(m.lora_params(16) for layer in resolve_lora_targets(spec, "all-linear") for m in layer)
    assert trainable_parameters(spec, s) == expected
    # adapter FLOPs per token follow the k routed experts, not all E of them
    f = flops_per_token(spec, s)
    adapters = f.forward - f.attention_forward - _matmul_params(spec) * 2
    per_token = 2 * 16 * sum(getattr(m, "lora_rank_factor", 1) * (m.in_features + m.out_features)
                             * (m.active if m.kind == "expert" else m.count)
                             for layer in resolve_lora_targets(spec, "all-linear") for m in layer)
    assert adapters == pytest.approx(per_token, rel=1e-9)
    assert per_token < 2 * 16 * expected / 16 / 4  # far below "every expert's adapter"


def test_routed_expert_gemms_are_small_and_less_efficient():
    moe, dense = load_spec("qwen3-30b-a3b"), load_spec("qwen3-8b")
    s = TrainSetup(micro_batch=2, grad_checkpointing=False)
    assert estimate_throughput(moe, s, get_gpu("h100")).mfu < estimate_throughput(dense, s, get_gpu("h100")).mfu


@pytest.mark.parametrize("model", ["qwen2.5-0.5b", "llama-3.1-8b", "qwen3-30b-a3b"])
def test_bigger_micro_batch_at_constant_effective_batch_is_never_slower(model):
    # the solver's binary search relies on this: it keeps the biggest micro-batch that fits
    spec = load_spec(model)
    for method in ("lora", "qlora", "full"):
        for ck in (False, True):
            speeds = [tps(spec, TrainSetup(method=method, micro_batch=mb, grad_accum=16 // mb, grad_checkpointing=ck),
                          "h100") for mb in (1, 2, 4, 8, 16)]
            assert speeds == sorted(speeds), (method, ck, speeds)
