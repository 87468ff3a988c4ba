"""Per-GPU memory and speed on several GPUs (DDP / FSDP), the solver's GPU count, and the
calibration against published multi-GPU measurements (`tests/data/published/measured.csv`, a copy of `shared/data/measured.csv`).

Behaviour tests assert relations, never hard-coded figures. The calibration compares like
with like (the `measures` column: torch allocated, reserved, or nvidia-smi) in GiB, each
row modelled with its own stack's knobs, and states its tolerance below."""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from planner.catalog import load_spec
from planner.gpus import GiB, get_gpu, interconnect_gbs
from planner.memory import estimate_memory
from planner.parallel import estimate_parallel_memory, host_memory_bytes
from verification.memory_calibration import setup_and_profile
from planner.setup import COMPONENTS, CalibrationProfile, TrainSetup
from planner.solver import Constraints, Hardware, solve
from planner.throughput import communication_seconds, estimate_throughput

# A copy of shared/data/measured.csv, kept in the repo so every clean clone runs these checks.
MEASURED = Path(__file__).resolve().parents[1] / "data" / "published" / "measured.csv"


@pytest.fixture(scope="module")
def specs():
    return {n: load_spec(n) for n in ("llama-3.1-8b", "llama-3.1-70b", "llama-2-7b")}


def _setup(**kw):
    base = dict(method="lora", seq_len=2048, micro_batch=1, grad_checkpointing=True, fused_ce=True)
    return TrainSetup(**{**base, **kw})


# -- memory relations --------------------------------------------------------------------------
def test_one_gpu_is_the_single_gpu_estimate(specs):
    s = _setup()
    assert estimate_parallel_memory(specs["llama-3.1-8b"], s) == estimate_memory(specs["llama-3.1-8b"], s)


def test_ddp_keeps_a_full_replica_plus_gradient_buckets(specs):
    spec, h100 = specs["llama-3.1-8b"], get_gpu("h100")
    one = estimate_memory(spec, _setup(), h100)
    for n in (2, 8):
        ddp = estimate_parallel_memory(spec, _setup(num_gpus=n, strategy="ddp"), h100)
        buckets = ddp.details["ddp_gradient_buckets"]
        assert buckets == one.components["adapter_weights"] > 0  # one grad-sized copy
        assert ddp.torch_peak_bytes == one.torch_peak_bytes + buckets  # does not shrink with n
        assert ddp.device_bytes > one.device_bytes and set(ddp.components) == set(COMPONENTS)


def test_fsdp_shards_weights_and_keeps_gathered_layers(specs):
    spec, h100 = specs["llama-3.1-70b"], get_gpu("h100")
    one = estimate_memory(spec, _setup(), h100)
    prev = None
    for n in (2, 4, 8):
        f = estimate_parallel_memory(spec, _setup(num_gpus=n, strategy="fsdp"), h100)
        w = f.components["unquantized_weights"]
        assert abs(w - one.components["unquantized_weights"] / n) <= n  # padding only
        assert f.details["fsdp_gathered_root"] >= (spec.embedding_params() + spec.lm_head_params()) * 2
        assert f.details["fsdp_gathered_layers"] > 0
        assert f.components["transient_peak"] >= f.details["fsdp_gathered_root"] + f.details["fsdp_gathered_layers"]
        assert f.components["saved_activations"] == one.components["saved_activations"]  # per-GPU micro-batch
        if prev is not None:
            assert f.device_bytes < prev.device_bytes
        prev = f
    assert prev.device_bytes < one.device_bytes


def test_fsdp_qlora_shards_packed_weights_but_not_quant_constants(specs):
    spec = specs["llama-3.1-70b"]
    one = estimate_memory(spec, _setup(method="qlora"))
    f = estimate_parallel_memory(spec, _setup(method="qlora", num_gpus=4, strategy="fsdp"))
    consts = one.details["weights_4bit_constants"]
    assert f.details["replicated_quant_constants"] == consts > 0
    packed_one = one.components["quantized_weights"] - consts
    assert abs(f.components["quantized_weights"] - consts - packed_one / 4) <= 4
    assert any("not parameters" in n for n in f.notes)


def test_cpu_offload_moves_shards_to_the_host(specs):
    spec = specs["llama-3.1-70b"]
    on = estimate_parallel_memory(spec, _setup(num_gpus=2, strategy="fsdp"), cpu_offload=True)
    off = estimate_parallel_memory(spec, _setup(num_gpus=2, strategy="fsdp"))
    assert on.device_bytes < off.device_bytes
    assert on.components["unquantized_weights"] == on.components["optimizer_states"] == 0
    assert host_memory_bytes(on) >= off.components["unquantized_weights"] and host_memory_bytes(off) == 0


def test_bad_combinations_are_refused(specs):
    spec = specs["llama-3.1-8b"]
    with pytest.raises(ValueError, match="single"):
        estimate_parallel_memory(spec, _setup(num_gpus=2))
    with pytest.raises(ValueError, match="fsdp"):
        estimate_parallel_memory(spec, _setup(num_gpus=2, strategy="ddp"), cpu_offload=True)


# -- speed -------------------------------------------------------------------------------------
def test_ddp_throughput_scales_and_fsdp_pays_for_slow_links(specs):
    spec = specs["llama-3.1-70b"]
    h100, rtx = get_gpu("h100"), get_gpu("rtx-4090")
    one = estimate_throughput(spec, _setup(method="qlora", grad_accum=8), h100)
    ddp = estimate_throughput(spec, _setup(method="qlora", grad_accum=4, num_gpus=2, strategy="ddp"), h100)
    assert 1.8 * one.tokens_per_second < ddp.tokens_per_second <= 2 * one.tokens_per_second
    assert interconnect_gbs(h100) > interconnect_gbs(get_gpu("a100-80gb")) > interconnect_gbs(rtx)
    lora = _setup(num_gpus=4, strategy="fsdp", grad_accum=4)
    nv, pcie = communication_seconds(spec, lora, h100), communication_seconds(spec, lora, rtx)
    assert pcie["per_micro_batch"] > 10 * nv["per_micro_batch"] > 0
    q = communication_seconds(spec, replace(lora, method="qlora"), rtx)
    assert q["per_micro_batch"] < pcie["per_micro_batch"] / 3  # 4-bit weights: a quarter of the bytes
    slow = estimate_throughput(spec, lora, rtx)
    assert slow.parts["communication"] > 0 and slow.bound == "communication"
    two_nodes = estimate_throughput(spec, replace(lora, num_gpus=16), h100, nodes=2)
    one_node = estimate_throughput(spec, replace(lora, num_gpus=8), h100)
    assert two_nodes.tokens_per_second / 16 < one_node.tokens_per_second / 8


# -- the solver ----------------------------------------------------------------------------------
def test_70b_lora_needs_several_h100s_with_fsdp(specs):
    spec, h100 = specs["llama-3.1-70b"], get_gpu("h100")
    r = solve(spec, Hardware(h100), Constraints(method="lora", max_gpus=8))
    s = r.choice.setup
    assert r.fits and s.num_gpus > 1 and s.strategy == "fsdp" and s.method == "lora"
    assert r.choice.memory.device_bytes <= r.budget_bytes
    assert r.single_gpu_need_bytes > r.budget_bytes
    assert s.effective_batch() == 16 and r.cost and r.seconds
    text = " ".join(r.reasons)
    assert "cannot hold" in text and "FSDP" in text and "QLoRA on one" in text
    fewer = solve(spec, Hardware(h100), Constraints(method="lora", gpus=s.num_gpus // 2, strategy="fsdp"))
    assert not fewer.fits  # the fewest GPUs that hold it
    one = solve(spec, Hardware(h100), Constraints(method="lora"))
    assert not one.fits and any(x.startswith("More GPUs") and f"--gpus {s.num_gpus}" in x for x in one.suggestions)


def test_gpus_nvml_found_all_train_with_ddp_when_a_replica_fits(specs):
    hw = Hardware(get_gpu("a100-80gb"), count=4, source="nvml")
    r = solve(specs["llama-3.1-8b"], hw, Constraints())
    s = r.choice.setup
    assert r.fits and s.num_gpus == 4 and s.strategy == "ddp" and s.effective_batch() == 16
    single = solve(specs["llama-3.1-8b"], Hardware(get_gpu("a100-80gb")), Constraints())
    assert r.choice.throughput.tokens_per_second > 3 * single.choice.throughput.tokens_per_second


def test_fixed_ddp_that_does_not_fit_is_not_switched(specs):
    r = solve(specs["llama-3.1-70b"], Hardware(get_gpu("h100")), Constraints(method="lora", gpus=8, strategy="ddp"))
    assert not r.fits and r.choice.setup.strategy == "ddp"


# -- calibration against published multi-GPU measurements -----------------------------------------
ROW_TOLERANCE = 0.25
"""Largest error allowed on one row: the stacks differ from ours in loading (fsdp_qlora's
low-memory loading leaves a reserved floor), in the loss (transformers 4.38 kept one more
fp32 logits copy: `shift_logits.contiguous()`), and in allocator streams."""
MEDIAN_TOLERANCE = 0.12
"""Largest median absolute error of a series. Known bias: every row is under-predicted
(FSDP CPU offload rows most: about -17% in both series, something FSDP keeps on the GPU
with offload that the model does not name yet)."""
ALLOCATED_TOLERANCE = 0.10
"""The allocated figures published beside two reserved ones (torch counters, no allocator)."""

# fsdp_qlora train.py (Answer.AI, March 2024): HF Llama + peft LoRA, pure bf16 (no autocast,
# adapters and AdamW states bf16), r=64 all-linear, dropout 0.1, fixed-length dummy rows,
# checkpointing, sdpa, transformers' loss (fp32 logits), DQ (bnb default for Linear4bit).
_AD = dict(lora_rank=64, lora_alpha=16, lora_targets="all-linear", lora_dropout=0.1, autocast=False,
           adapter_dtype="bfloat16", grad_checkpointing=True, packing=False, fused_ce=False, attn="sdpa",
           optimizer="adamw")
# peft docs (accelerate FSDP + trl SFTTrainer + peft QLoRA, quant_storage bf16): our path's
# stack; r=8 all-linear, packing 2048, micro-batch 2 x 2, flash-attention-2, transformers' loss.
_HF = dict(lora_rank=8, lora_alpha=16, lora_targets="all-linear", lora_dropout=0.1, grad_checkpointing=True,
           packing=True, fused_ce=False, attn="flash", optimizer="adamw", seq_len=2048, micro_batch=2, grad_accum=2)


def _ad(method, seq, mb):
    return {**_AD, "method": method, "seq_len": seq, "micro_batch": mb}


# row -> (series, catalog model, GPU, setup knobs, GPUs, strategy, CPU offload)
CALIBRATION = {
    "M104": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("qlora", 512, 1), 2, "fsdp", False),
    "M105": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("qlora", 2048, 1), 2, "fsdp", False),
    "M106": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("lora", 512, 1), 2, "fsdp", False),
    "M107": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("lora", 2048, 1), 2, "fsdp", False),
    "M108": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("qlora", 2048, 4), 2, "fsdp", False),
    "M109": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("qlora", 2048, 10), 2, "fsdp", False),
    "M110": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("lora", 2048, 4), 2, "fsdp", False),
    "M111": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("lora", 2048, 6), 2, "fsdp", False),
    # fsdp_qlora's "ddp" is FSDP NO_SHARD: a replica per GPU, gradients reduced (modelled as DDP)
    "M112": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("qlora", 2048, 8), 2, "ddp", False),
    "M113": ("fsdp_qlora", "llama-2-7b", "rtx-3090", _ad("lora", 2048, 4), 2, "ddp", False),
    "M114": ("fsdp_qlora", "llama-2-7b", "rtx-4090", _ad("lora", 2048, 10), 2, "fsdp", True),
    "M115": ("fsdp_qlora", "llama-2-7b", "rtx-4090", _ad("qlora", 2048, 12), 2, "fsdp", True),
    "M116": ("fsdp_qlora", "yi-34b", "rtx-3090", _ad("qlora", 2048, 2), 2, "fsdp", False),
    "M117": ("fsdp_qlora", "yi-34b", "rtx-3090", _ad("qlora", 2048, 4), 2, "fsdp", True),
    "M118": ("fsdp_qlora", "llama-2-70b", "rtx-3090", _ad("qlora", 2048, 2), 2, "fsdp", True),
    # Mistral-7B-v0.2 base has v0.1's shapes (no sliding window: same memory at these lengths)
    "M119": ("fsdp_qlora", "mistral-7b-v0.1", "rtx-4090", _ad("qlora", 2048, 12), 2, "fsdp", True),
    "M120": ("fsdp_qlora", "mistral-7b-v0.1", "rtx-4090", _ad("qlora", 24576, 1), 2, "fsdp", True),
    "M124": ("hf_accelerate_fsdp", "llama-2-70b", "a100-80gb", {**_HF, "method": "qlora"}, 2, "fsdp", True),
    "M125": ("hf_accelerate_fsdp", "llama-2-70b", "a100-80gb", {**_HF, "method": "qlora"}, 2, "fsdp", False),
}
# published allocated figures beside reserved ones (the rows' notes), in GiB
ALLOCATED_NOTES = {"M106": 8.28, "M107": 9.16}

EXCLUDED = {
    **{r: "lit-gpt 2023 FSDP LoRA: the published max_memory_allocated is the model set-up peak (the full "
          "bf16 model materialised on every GPU before FSDP shards it, plus the shard), not the training "
          "step; see test_litgpt_fsdp_rows_peak_at_setup" for r in ("M021", "M022", "M023", "M024", "M025",
                                                                    "M026", "M027", "M028")},
    "M035": "litgpt full fine-tuning (pure bf16, FSDP): full fine-tuning through FSDP is not planned here",
    "M044": "an OOM bound, not a figure", "M059": "README/yaml disagree on the GPU count (4 vs 2)",
    **{r: "torchtune: the 'peak memory' stat is not named (allocated vs reserved differ by 10-25%)"
       for r in ("M070", "M072", "M075", "M077", "M078", "M079", "M085", "M086", "M087")},
    "M121": "DeepSpeed ZeRO-3 (not a strategy tuneplan launches); nvidia-smi screenshot '64 (80%)'",
    "M122": "DeepSpeed ZeRO-3 (not a strategy tuneplan launches)",
    "M123": "a range (72-80 GB) that grows at the end with the FULL_STATE_DICT save; the step is not isolated",
    "M128": "encoder-decoder (T0) with ZeRO-3 offload on one GPU", "M130": "encoder-decoder (mt0) with ZeRO-3",
    "M132": "BLOOM (architecture not planned) with ZeRO-3 offload",
    "M162": "llama-recipes: recipe defaults (LoRA, sequence, batch) not stated",
    "M167": "full fine-tuning of Falcon (architecture not planned) with ZeRO-3",
    "M170": "second-hand LongLoRA table, ZeRO-2, knobs not stated",
}


def _rows():
    with open(MEASURED, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def _predict(row_id):
    series, model, gpu, knobs, n, strategy, offload = CALIBRATION[row_id]
    spec = load_spec(model)
    setup, profile = setup_and_profile({**knobs, "num_gpus": n, "strategy": strategy}, row_id)
    est = estimate_parallel_memory(spec, setup, get_gpu(gpu), cpu_offload=offload, padded_rows=False,
                                   profile=profile)
    return est


def _measured_kind(row) -> str:
    m = row["measures"].lower()
    if "nvidia-smi" in m:
        return "device"
    if "reserved" in m:
        return "reserved"
    return "allocated"


def _predicted(est, kind: str) -> int:
    if kind == "device":
        return est.device_bytes
    if kind == "reserved":  # torch's reserved pool: allocated peak + allocator reserve (no context, no paged)
        return est.torch_peak_bytes + est.components["allocator_overhead"]
    return est.torch_peak_bytes


def calibration_errors() -> dict[str, dict[str, float]]:
    """series -> row id -> relative error (predicted / measured - 1), like with like in GiB."""
    rows = _rows()
    out: dict[str, dict[str, float]] = {}
    for rid, (series, *_rest) in CALIBRATION.items():
        row = rows[rid]
        measured = float(row["approx_GiB"]) * GiB  # approx_GiB: the published figure in GiB
        kind = _measured_kind(row)
        out.setdefault(f"{series} ({kind})", {})[rid] = _predicted(_predict(rid), kind) / measured - 1
    out["fsdp_qlora (allocated, from notes)"] = {
        rid: _predict(rid).torch_peak_bytes / (gib * GiB) - 1 for rid, gib in ALLOCATED_NOTES.items()}
    return out


def test_every_multi_gpu_row_is_scored_or_excluded_with_a_reason():
    rows = _rows()
    several = re.compile(r"×\s*(?:[2-9]|\d{2,})")  # "×2", "× 8", "×16"; "×1" is one GPU
    multi = {rid for rid, r in rows.items() if several.search(r["gpu_sharding"])}
    assert multi, "no multi-GPU rows found"
    unaccounted = multi - set(CALIBRATION) - set(EXCLUDED)
    assert not unaccounted, f"multi-GPU rows neither scored nor excluded: {sorted(unaccounted)}"
    assert all(EXCLUDED[r] for r in EXCLUDED)


def test_per_gpu_memory_matches_published_multi_gpu_rows():
    errors = calibration_errors()
    report = []
    for series, errs in errors.items():
        abs_errs = [abs(e) for e in errs.values()]
        worst = max(errs, key=lambda r: abs(errs[r]))
        report.append(f"{series}: n={len(errs)} median {statistics.median(abs_errs):.1%} "
                      f"worst {worst} {errs[worst]:+.1%}")
    print("\n".join(report))
    for series, errs in errors.items():
        tol = ALLOCATED_TOLERANCE if "allocated" in series else ROW_TOLERANCE
        bad = {r: f"{e:+.1%}" for r, e in errs.items() if abs(e) > tol}
        assert not bad, f"{series}: rows beyond {tol:.0%}: {bad}\n" + "\n".join(report)
        assert statistics.median(abs(e) for e in errs.values()) <= MEDIAN_TOLERANCE, "\n".join(report)


def test_litgpt_fsdp_rows_peak_at_setup():
    """Why lit-gpt's FSDP rows are excluded: per GPU they read at least the full bf16 model
    plus its shard, far above a sharded training step (which the model predicts)."""
    rows = _rows()
    for rid, model, n in (("M025", "llama-2-7b", 2), ("M026", "llama-2-7b", 2), ("M027", "llama-2-7b", 2),
                          ("M028", "llama-2-13b", 4)):
        spec = load_spec(model)
        full = spec.parameter_count() * 2  # bf16-true
        measured = float(rows[rid]["approx_GiB"]) * GiB
        assert measured >= 0.97 * (full + full / n), rid
        step = estimate_parallel_memory(spec, TrainSetup(
            method="lora", lora_rank=8, lora_alpha=16, lora_targets=("q_proj", "v_proj"), seq_len=1304,
            micro_batch=1, packing=False, fused_ce=False, num_gpus=n, strategy="fsdp"), padded_rows=False,
            profile=CalibrationProfile(autocast=False, adapter_dtype="bfloat16", loss_upcast=False))
        assert step.torch_peak_bytes < 0.7 * measured, rid


THROUGHPUT_TOLERANCE = 0.45
"""Largest error of one row's multi-GPU tokens/s: the single-GPU speed model is a +-30%
estimate (planner/throughput.py), and these rows run fsdp_qlora's pure-bf16 stack."""
THROUGHPUT_MEDIAN_TOLERANCE = 0.30


def test_multi_gpu_throughput_matches_published_times():
    """fsdp_qlora's published wall times (1024 fixed-length samples on 2 GPUs): communication
    dominates at micro-batch 1 over PCIe without peer-to-peer, compute at larger ones."""
    rows = _rows()
    errors = {}
    for rid, (_series, model, gpu, knobs, n, strategy, offload) in CALIBRATION.items():
        m = re.match(r"([\d,]+) s for (\d+) samples", rows[rid]["throughput_time"])
        if not m:
            continue
        measured = int(m.group(2)) * knobs["seq_len"] / float(m.group(1).replace(",", ""))
        # the speed model has no stack differences: the profile is left out
        setup, _ = setup_and_profile({**knobs, "num_gpus": n, "strategy": strategy, "cpu_offload": offload,
                                      "grad_accum": 1}, rid)
        errors[rid] = estimate_throughput(load_spec(model), setup, get_gpu(gpu)).tokens_per_second / measured - 1
    assert len(errors) >= 10
    median = statistics.median(abs(e) for e in errors.values())
    worst = max(errors, key=lambda r: abs(errors[r]))
    print(f"multi-GPU tokens/s: n={len(errors)} median {median:.1%} worst {worst} {errors[worst]:+.1%}")
    assert all(abs(e) <= THROUGHPUT_TOLERANCE for e in errors.values()), errors
    assert median <= THROUGHPUT_MEDIAN_TOLERANCE
    # the micro-batch-1 LoRA rows are communication-bound (bf16 weights over a slow link)
    slow_setup, _ = setup_and_profile({**_ad("lora", 512, 1), "num_gpus": 2, "strategy": "fsdp"})
    slow = estimate_throughput(load_spec("llama-2-7b"), slow_setup, get_gpu("rtx-3090"))
    assert slow.bound == "communication"
