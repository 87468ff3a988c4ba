"""The solver: behaviour and relations, never hard-coded memory figures (those belong to the
memory model and its own tests)."""

from __future__ import annotations


import pytest

from planner.catalog import load_spec
from planner.gpus import GiB, get_gpu
from planner.solver import Constraints, DatasetStats, Hardware, solve


@pytest.fixture(scope="module")
def specs():
    return {n: load_spec(n) for n in ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-0.5b", "qwen2.5-7b")}


def plan(specs, model, gpu, dataset=None, free=None, **kw):
    return solve(specs[model], Hardware(get_gpu(gpu), free_bytes=free), Constraints(**kw), dataset)


def _check_fitting(r):
    assert r.fits
    assert r.choice.memory.device_bytes <= r.budget_bytes
    for a in r.alternatives:
        assert a.fits and a.memory.device_bytes <= r.budget_bytes
        assert a.setup != r.choice.setup


def test_8b_on_a_3060_is_explained_qlora(specs):
    r = plan(specs, "llama-3.1-8b", "rtx-3060-12gb")
    _check_fitting(r)
    assert r.choice.setup.method == "qlora"
    text = " ".join(r.reasons)
    assert "QLoRA" in text and "LoRA on the 16-bit model does not fit" in text
    assert r.choice.setup.effective_batch() == 16
    assert r.seconds and r.cost and r.cost > 0


def test_70b_on_an_a100_80gb_is_qlora_with_alternatives(specs):
    r = plan(specs, "llama-3.1-70b", "a100-80gb")
    _check_fitting(r)
    assert r.choice.setup.method == "qlora"
    assert r.alternatives
    speeds = [a.tokens_per_second() for a in r.alternatives]
    assert speeds == sorted(speeds, reverse=True)


def test_small_model_on_h100_is_lora_without_checkpointing(specs):
    r = plan(specs, "qwen2.5-0.5b", "h100")
    _check_fitting(r)
    assert r.choice.setup.method == "lora"
    assert r.choice.setup.grad_checkpointing is False
    assert any("checkpointing is off" in x for x in r.reasons)


def test_effective_batch_is_kept_by_every_candidate(specs):
    r = plan(specs, "llama-3.1-8b", "rtx-4090", effective_batch=32)
    for c in (r.choice, *r.alternatives):
        assert c.setup.micro_batch * c.setup.grad_accum == 32


def test_the_choice_is_the_fastest_of_its_kind(specs):
    r = plan(specs, "llama-3.1-8b", "a100-80gb")
    same = [a for a in r.alternatives if a.setup.method == r.choice.setup.method
            and a.setup.grad_checkpointing == r.choice.setup.grad_checkpointing]
    assert all(a.tokens_per_second() <= r.choice.tokens_per_second() for a in same)


def test_lora_preferred_over_qlora_when_both_fit_unless_asked(specs):
    auto = plan(specs, "llama-3.1-8b", "a100-80gb")
    assert auto.choice.setup.method == "lora"
    asked = plan(specs, "llama-3.1-8b", "a100-80gb", method="qlora")
    assert asked.choice.setup.method == "qlora" and asked.fits


def test_fixed_knobs_are_kept(specs):
    fixed = {"micro_batch": 1, "lora_rank": 64, "grad_checkpointing": True, "optimizer": "paged-adamw-8bit",
             "lora_targets": ("q_proj", "v_proj")}
    r = plan(specs, "llama-3.1-8b", "rtx-4090", fixed=fixed)
    s = r.choice.setup
    assert (s.micro_batch, s.grad_accum, s.lora_rank, s.grad_checkpointing, s.optimizer) == (1, 16, 64, True, "paged-adamw-8bit")
    assert s.lora_targets == ("q_proj", "v_proj")
    for a in r.alternatives:
        assert a.setup.micro_batch == 1 and a.setup.lora_rank == 64


def test_fixed_micro_batch_and_accumulation_set_the_effective_batch(specs):
    r = plan(specs, "qwen2.5-0.5b", "rtx-4090", fixed={"micro_batch": 2, "grad_accum": 3})
    assert (r.choice.setup.micro_batch, r.choice.setup.grad_accum) == (2, 3)


def test_no_bf16_falls_back_to_fp16_and_says_so(specs):
    r = plan(specs, "llama-3.1-8b", "t4")
    assert r.choice.setup.compute_dtype == "float16"
    assert any("bfloat16" in x for x in r.reasons)
    forced = plan(specs, "llama-3.1-8b", "t4", fixed={"compute_dtype": "bfloat16"})
    assert forced.choice.setup.compute_dtype == "float16"
    assert any("does not support bfloat16" in w for w in forced.warnings)
    ampere = plan(specs, "llama-3.1-8b", "rtx-3090")
    assert ampere.choice.setup.compute_dtype == "bfloat16"


def test_flash_attention_on_turing_falls_back(specs):
    r = plan(specs, "qwen2.5-0.5b", "t4", fixed={"attn": "flash"})
    assert r.choice.setup.attn == "sdpa" and any("Ampere" in w for w in r.warnings)


def test_sequence_length_from_dataset_p99_rounded_up(specs):
    r = plan(specs, "llama-3.1-8b", "rtx-4090", dataset=DatasetStats(total_tokens=2_000_000, p99_tokens=1000))
    assert r.choice.setup.seq_len == 1024
    assert r.dataset_tokens == 2_000_000 and not r.dataset_tokens_assumed
    assert any("1000 tokens" in x for x in r.reasons)
    default = plan(specs, "llama-3.1-8b", "rtx-4090")
    assert default.choice.setup.seq_len == 2048 and default.dataset_tokens_assumed


def test_a_sequence_length_from_the_data_never_exceeds_the_context_one_given_is_planned_as_given(specs):
    context = specs["qwen2.5-0.5b"].max_position_embeddings
    r = plan(specs, "qwen2.5-0.5b", "h100", fixed={"seq_len": context * 2})
    assert r.choice.setup.seq_len == context * 2
    assert any(str(context * 2) in w and str(context) in w and "RoPE scaling" in w for w in r.warnings)
    r2 = plan(specs, "qwen2.5-0.5b", "h100", dataset=DatasetStats(p99_tokens=context * 3))
    assert r2.choice.setup.seq_len == context and r2.warnings


def test_max_seq_len_caps_the_dataset_length(specs):
    r = plan(specs, "qwen2.5-0.5b", "h100", dataset=DatasetStats(p99_tokens=9000), max_seq_len=4096)
    assert r.choice.setup.seq_len == 4096


def test_nothing_fits_says_what_is_needed_and_what_would_fit(specs):
    r = plan(specs, "llama-3.1-70b", "rtx-4090")
    assert not r.fits
    assert r.choice.memory.device_bytes > r.budget_bytes
    text = " ".join(r.suggestions)
    assert "needs" in text
    bigger = next(s for s in r.suggestions if s.startswith("A bigger card"))
    key = bigger.split("--gpu ")[1].split(")")[0]
    assert get_gpu(key).memory_bytes > get_gpu("rtx-4090").memory_bytes
    assert plan(specs, "llama-3.1-70b", key).fits, "the suggested card must really fit"
    assert any("GPUs" in s for s in r.suggestions)


def test_lora_only_that_does_not_fit_suggests_qlora_and_shorter_sequences(specs):
    r = plan(specs, "llama-3.1-8b", "rtx-3060-12gb", method="lora")
    assert not r.fits
    assert any(s.startswith("QLoRA fits") for s in r.suggestions)
    long = plan(specs, "llama-3.1-8b", "rtx-3060-12gb", method="qlora", fixed={"seq_len": 65536})
    if not long.fits:
        shorter = [s for s in long.suggestions if "shorter sequence" in s]
        assert shorter
        n = int(shorter[0].split("--seq-len ")[1].split(")")[0])
        assert plan(specs, "llama-3.1-8b", "rtx-3060-12gb", method="qlora", fixed={"seq_len": n}).fits


def test_busy_card_plans_for_its_free_memory(specs):
    card = get_gpu("rtx-4090")
    full = plan(specs, "llama-3.1-8b", "rtx-4090")
    busy = plan(specs, "llama-3.1-8b", "rtx-4090", free=card.memory_bytes // 2)
    assert busy.usable_bytes == card.memory_bytes // 2
    assert busy.choice.memory.device_bytes <= busy.budget_bytes
    assert busy.choice.tokens_per_second() <= full.choice.tokens_per_second()
    tiny = plan(specs, "llama-3.1-8b", "rtx-4090", free=2 * GiB)
    assert not tiny.fits and any("Other processes" in s for s in tiny.suggestions)


def test_more_memory_never_gives_a_slower_plan(specs):
    speeds = []
    for gib in (16, 24, 40, 80):
        r = plan(specs, "qwen2.5-7b", "a100-80gb", free=gib * GiB)
        speeds.append(r.choice.tokens_per_second() if r.fits else 0.0)
    assert speeds == sorted(speeds)


def test_safety_margin_is_a_setting(specs):
    a = plan(specs, "llama-3.1-8b", "rtx-4090", safety_margin=0.0)
    b = plan(specs, "llama-3.1-8b", "rtx-4090", safety_margin=0.3)
    assert a.budget_bytes == a.usable_bytes > b.budget_bytes
    assert b.choice.memory.device_bytes <= b.budget_bytes
    with pytest.raises(ValueError, match="safety_margin"):
        plan(specs, "llama-3.1-8b", "rtx-4090", safety_margin=1.5)


def test_prefer_accuracy_trains_all_weights_when_that_fits(specs):
    r = plan(specs, "qwen2.5-0.5b", "h100", prefer_accuracy=True)
    assert r.fits and r.choice.setup.method == "full"
    assert r.choice.setup.optimizer == "adamw", "exact 32-bit states when they fit"
    big = plan(specs, "llama-3.1-8b", "rtx-4090", prefer_accuracy=True)
    assert big.fits and big.choice.setup.method in ("lora", "qlora")


def test_price_override_scales_the_cost(specs):
    a = plan(specs, "llama-3.1-8b", "rtx-4090")
    b = plan(specs, "llama-3.1-8b", "rtx-4090", price_per_hour=get_gpu("rtx-4090").price_per_hour * 2)
    assert b.cost == pytest.approx(2 * a.cost)
    epochs = plan(specs, "llama-3.1-8b", "rtx-4090", epochs=3)
    assert epochs.seconds == pytest.approx(3 * a.seconds)


def test_full_70b_search_stays_small(specs):
    r = plan(specs, "llama-3.1-70b", "a100-80gb")
    assert r.evaluated <= 60  # a few binary searches, not a grid (bench/ times it)


def test_every_catalog_model_gets_a_plan_or_a_reason():
    from planner import catalog

    for entry in catalog.entries():
        r = solve(entry.spec(), Hardware(get_gpu("a100-80gb")), Constraints())
        if r.fits:
            assert r.choice.memory.device_bytes <= r.budget_bytes and r.choice.tokens_per_second() > 0, entry.name
            assert r.reasons
        else:
            assert r.suggestions and "needs" in r.suggestions[0], entry.name


def test_choice_memory_is_the_memory_models_own_estimate(specs):
    from planner.memory import estimate_memory

    r = plan(specs, "llama-3.1-8b", "rtx-4090")
    again = estimate_memory(specs["llama-3.1-8b"], r.choice.setup, get_gpu("rtx-4090"))
    assert again.device_bytes == r.choice.memory.device_bytes
    assert again.torch_peak_bytes == r.choice.memory.torch_peak_bytes


def test_fixed_sequence_shorter_than_the_data_warns_about_truncation(specs):
    r = plan(specs, "qwen2.5-0.5b", "h100", fixed={"seq_len": 512}, dataset=DatasetStats(p99_tokens=1500))
    assert r.choice.setup.seq_len == 512
    assert any("truncated" in w and "1500" in w for w in r.warnings)


def test_moe_qlora_says_its_fused_experts_stay_16_bit():
    # transformers 5 keeps fused expert tensors; bitsandbytes quantizes nn.Linear only
    spec = load_spec("mixtral-8x7b")
    r = solve(spec, Hardware(gpu=get_gpu("h100")), Constraints(method="qlora", gpus=1))
    experts = sum(m.weight_params() for layer in spec.layers for m in layer if m.kind == "expert")
    text = [w for w in r.warnings if "16 bits" in w]
    assert len(text) == 1 and f"{experts * 2 / GiB:.1f} GiB" in text[0]
    assert not r.fits and "What would make it fit" in text[0] and r.suggestions
    dense = solve(load_spec("llama-3.1-8b"), Hardware(gpu=get_gpu("h100")), Constraints(method="qlora"))
    assert not any("16 bits" in w for w in dense.warnings)
