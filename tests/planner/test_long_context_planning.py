"""The long-context path in the planner: activation offloading, the tiled MLP, linear attention,
host RAM and `--seq-len max` (docs/long-context.md). Relations and mechanisms, not stored figures:
the published maxima are lower bounds the solver must reach, computed here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.catalog import load_spec
from planner.gpus import GPUS, GiB, get_gpu, host_link_gbs
from planner.memory import OFFLOAD_FWD_STASH, estimate_memory, pinned_bytes, tiled_mlp_shards
from planner.setup import TrainSetup
from planner.solver import SEQ_ROUND, Constraints, Hardware, solve
from planner.throughput import estimate_throughput, flops_per_token

QLORA32 = dict(method="qlora", lora_rank=32, lora_targets="all-linear", micro_batch=1)


@pytest.fixture(scope="module")
def specs():
    return {n: load_spec(n) for n in ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b")}


def _long(seq: int, **kw) -> TrainSetup:
    return TrainSetup(**{**QLORA32, "seq_len": seq, "packing": False, "fused_ce": True, "grad_checkpointing": True,
                         "grad_accum": 16, **kw})


# -- memory ----------------------------------------------------------------------------------
def test_pinned_blocks_round_up_to_a_power_of_two():
    assert [pinned_bytes(n) for n in (0, 1, 3, 4096, 4097, 3 << 30)] == [0, 1, 4, 4096, 8192, 4 << 30]


def test_offloading_keeps_the_stash_on_the_card_and_every_layer_input_in_host_ram(specs):
    spec = specs["llama-3.1-8b"]
    seq = 65536
    on = estimate_memory(spec, _long(seq, offload_activations=True), get_gpu("a100-80gb"))
    off = estimate_memory(spec, _long(seq), get_gpu("a100-80gb"))
    layer_input = seq * spec.hidden_size * 2  # bf16 hidden states of one micro-batch row
    L = spec.num_layers
    assert off.details["checkpointed_layer_inputs"] == L * layer_input
    # trl's forward stash (max_fwd_stash_size) and the output being written stay on the card, and
    # the first layer's input: a leaf (enable_input_require_grads) its AccumulateGrad node holds
    assert on.details["checkpointed_layer_inputs"] == (OFFLOAD_FWD_STASH + 1 + 1) * layer_input
    host = on.details["host_activation_bytes"]
    assert host >= L * pinned_bytes(layer_input) and host % 4096 == 0
    assert on.device_bytes < off.device_bytes - (L - OFFLOAD_FWD_STASH - 1) * layer_input * 0.9
    assert "host_activation_bytes" not in off.details


def test_offloading_implies_checkpointing(specs):
    spec = specs["llama-3.1-8b"]
    plain = TrainSetup(**QLORA32, seq_len=8192, grad_checkpointing=False)
    a = estimate_memory(spec, replace(plain, offload_activations=True))
    b = estimate_memory(spec, replace(plain, offload_activations=True, grad_checkpointing=True))
    assert a.device_bytes == b.device_bytes
    assert flops_per_token(spec, replace(plain, offload_activations=True)).recompute > 0


def test_tiled_mlp_shards_follow_ceil_of_positions_over_hidden():
    h = 4096
    assert tiled_mlp_shards(TrainSetup(seq_len=4096, packing=False), h) == (1, 4096)
    assert tiled_mlp_shards(TrainSetup(seq_len=4097, packing=False), h) == (2, 2049)
    assert tiled_mlp_shards(TrainSetup(seq_len=342733, packing=False), h) == (84, 4081)
    # padding-free packing flattens the micro-batch into one row of b x s positions
    assert tiled_mlp_shards(TrainSetup(seq_len=4096, micro_batch=4), h) == (4, 4096)
    # unpacked rows keep b rows: a shard holds b x ceil(s / shards) tokens
    assert tiled_mlp_shards(TrainSetup(seq_len=8192, micro_batch=4, packing=False), h) == (2, 16384)


def test_the_shard_rule_is_the_training_path_s():
    lc = pytest.importorskip("tuneplan.training.long_context")
    for seq in (1, 4095, 4096, 4097, 65536, 342733):
        shards, per = tiled_mlp_shards(TrainSetup(seq_len=seq, packing=False), 4096)
        assert (shards, per) == (lc.mlp_shards(seq, 4096), lc.mlp_shard_tokens(seq, 4096))


def test_tiled_mlp_keeps_one_shard_of_the_mlp_intermediates(specs):
    spec = specs["llama-3.1-8b"]
    seq = 131072
    plain = estimate_memory(spec, _long(seq, lora_dropout=0.0))
    tiled = estimate_memory(spec, _long(seq, lora_dropout=0.0, tiled_mlp=True))
    T, inter, r = seq, spec.intermediate_size, 32
    # the recomputed layer no longer saves gate, up, act and their product (3 x T x inter), the
    # down projection's LoRA input (T x inter) and the three lora_A outputs; the MLP input stays
    assert plain.details["recomputed_layer"] - tiled.details["recomputed_layer"] == 2 * (4 * T * inter + 3 * T * r)
    assert tiled.details["tiled_mlp_shards"] == 32 and tiled.details["tiled_mlp_shard_tokens"] == 4096
    assert tiled.device_bytes < plain.device_bytes
    # it grows with the shard, not with the sequence: twice the shards, the same shard
    longer = estimate_memory(spec, _long(2 * seq, lora_dropout=0.0, tiled_mlp=True, offload_activations=True))
    shorter = estimate_memory(spec, _long(seq, lora_dropout=0.0, tiled_mlp=True, offload_activations=True))
    assert longer.device_bytes < 2.2 * shorter.device_bytes


def test_defaults_leave_every_existing_estimate_alone(specs):
    spec = specs["qwen2.5-7b"]
    for s in (TrainSetup(), TrainSetup(method="qlora", micro_batch=4), TrainSetup(grad_checkpointing=False)):
        m = estimate_memory(spec, s)
        explicit = estimate_memory(spec, replace(s, offload_activations=False, tiled_mlp=False))
        assert m == explicit and "host_activation_bytes" not in m.details


# -- throughput ------------------------------------------------------------------------------
def test_every_catalog_card_has_a_host_link_and_it_follows_its_pcie_generation():
    for g in GPUS:
        assert host_link_gbs(g), g.key
    assert host_link_gbs(get_gpu("h100")) == 2 * host_link_gbs(get_gpu("a100-80gb"))
    assert host_link_gbs(get_gpu("a100-80gb")) == 2 * host_link_gbs(get_gpu("v100-16gb"))
    assert host_link_gbs(get_gpu("gh200")) > 5 * host_link_gbs(get_gpu("h100"))  # NVLink-C2C


def test_tiled_mlp_recomputes_the_mlp_forward_and_offloading_costs_copies(specs):
    spec = specs["llama-3.1-8b"]
    gpu = get_gpu("a100-80gb")
    base = _long(65536, lora_dropout=0.0)
    f0, f1 = flops_per_token(spec, base), flops_per_token(spec, replace(base, tiled_mlp=True))
    mlp = sum(2 * m.in_features * m.out_features for layer in spec.layers for m in layer
              if m.name in ("gate_proj", "up_proj", "down_proj"))
    adapters = sum(2 * 32 * (m.in_features + m.out_features) for layer in spec.layers for m in layer
                   if m.name in ("gate_proj", "up_proj", "down_proj"))
    assert f1.recompute - f0.recompute == pytest.approx(mlp + adapters)
    t0 = estimate_throughput(spec, base, gpu)
    t1 = estimate_throughput(spec, replace(base, offload_activations=True), gpu)
    assert t0.parts["offload"] == 0 and t1.parts["offload"] > 0
    moved = (spec.num_layers + 1) * 65536 * spec.hidden_size * 2
    # at least the backward's copies (not overlapped), at most both directions
    assert moved / (host_link_gbs(gpu) * 1e9) <= t1.parts["offload"] <= 2 * moved / (host_link_gbs(gpu) * 1e9)
    assert t1.tokens_per_second < t0.tokens_per_second


# -- the solver ------------------------------------------------------------------------------
def _plan(spec, gpu="a100-80gb", free=None, **kw):
    fixed = {"lora_rank": 32, "lora_targets": "all-linear", "micro_batch": 1, **kw.pop("fixed", {})}
    return solve(spec, Hardware(get_gpu(gpu), free_bytes=free), Constraints(method="qlora", fixed=fixed, **kw))


def test_the_long_context_knobs_stay_off_while_the_sequence_fits_without_them(specs):
    for name, gpu in (("llama-3.1-8b", "rtx-4090"), ("llama-3.1-8b", "a100-80gb"), ("llama-3.1-70b", "a100-80gb")):
        r = solve(specs[name], Hardware(get_gpu(gpu)), Constraints())
        s = r.choice.setup
        assert r.fits and not s.offload_activations and not s.tiled_mlp and not s.chunked_norm and s.packing and s.lora_dropout == 0.05
        assert all(not (a.setup.offload_activations or a.setup.tiled_mlp or a.setup.chunked_norm) for a in r.alternatives)


def test_a_long_sequence_turns_the_path_on_only_as_far_as_it_needs_and_says_why(specs):
    spec = specs["llama-3.1-8b"]
    seen = set()
    for gpu, seq in (("rtx-4090", 16384), ("rtx-4090", 32768), ("rtx-4090", 65536), ("a100-40gb", 65536),
                     ("a100-80gb", 131072)):
        r = _plan(spec, gpu, fixed={"seq_len": seq})
        s = r.choice.setup
        assert r.fits, (gpu, seq)
        budget = r.budget_bytes
        if not (s.offload_activations or s.tiled_mlp or not s.packing):
            continue  # the standard path fits
        seen.add((s.offload_activations, s.tiled_mlp))
        assert not s.packing  # the long-context path never keeps SDPA's quadratic block mask
        # cheapest first: without the knobs it turned on, this micro-batch does not fit
        plain = estimate_memory(spec, replace(s, offload_activations=False, tiled_mlp=False), get_gpu(gpu))
        assert plain.device_bytes > budget
        text = " ".join(r.reasons)
        assert "long-context path" in text and "Attention: SDPA on unpacked rows" in text
        if s.offload_activations:
            assert s.grad_checkpointing and "host RAM" in text and "per micro-batch" in text
        if s.tiled_mlp:
            assert "Tiled MLP is on" in text
    assert (True, False) in seen and (True, True) in seen  # both steps are exercised


@pytest.mark.parametrize("model, free, published, reached", [
    ("llama-3.1-8b", None, 342_733, True),  # Unsloth's published maximum for Llama-3.1-8B, 80 GB
    ("llama-3.1-70b", None, 89_389, True),  # Llama-3.3-70B (same shapes), 80 GB
    ("llama-3.1-70b", 48 * GiB, 12_106, True),  # Llama-3.3-70B, 48 GB: the weights take most of it
])
def test_seq_len_max_is_the_longest_that_fits_and_reaches_the_published_maxima(specs, model, free, published,
                                                                               reached):
    """With the chunked RMSNorm and the host-resident embedding the search reaches the published
    lengths within the default 9% margin (docs/long-context.md)."""
    spec = specs[model]
    r = _plan(spec, free=free, seq_len_max=True)
    s = r.choice.setup
    assert r.fits and r.choice.memory.device_bytes <= r.budget_bytes
    assert s.offload_activations and not s.packing and s.chunked_norm and s.offload_embedding
    assert "embed_tokens_host" in r.choice.memory.details
    assert s.tiled_mlp == (s.seq_len > spec.hidden_size)  # one shard below the hidden size: nothing to tile
    assert r.choice.host_bytes() >= spec.num_layers * s.seq_len * spec.hidden_size * 2
    # the longest: one step more does not fit the least-memory configuration
    more = estimate_memory(spec, replace(s, seq_len=s.seq_len + SEQ_ROUND), get_gpu("a100-80gb"))
    assert more.device_bytes > r.budget_bytes
    assert any(x.startswith(f"Sequence length {s.seq_len}: the longest") for x in r.reasons)
    assert any("RoPE scaling" in w for w in r.warnings) == (s.seq_len > spec.max_position_embeddings)
    assert (s.seq_len >= published) == reached
    whole = _plan(spec, free=free, seq_len_max=True, safety_margin=0.0)
    assert whole.fits and whole.choice.setup.seq_len >= published
    assert whole.choice.memory.device_bytes <= whole.usable_bytes
    # the chunked norm is what closes the gap: without it the default margin stops short
    plain = _plan(spec, free=free, seq_len_max=True, fixed={"chunked_norm": False})
    assert plain.choice.setup.seq_len < s.seq_len and not plain.choice.setup.chunked_norm
    if free is None:  # on 80 GB; on 48 GiB it is the host-resident embedding (the next test)
        assert plain.choice.setup.seq_len < published


def test_seq_len_max_on_48_gib_needs_the_embedding_off_the_card(specs):
    """Llama-3.3-70B on 48 GB: the 4-bit weights, the 16-bit head and the adapters take most of
    the 43.7 GiB the default margin leaves; with the 1.96 GiB input embedding table on the card
    too, the search stops short of Unsloth's 12,106 tokens, with it in host RAM it passes them."""
    spec = specs["llama-3.1-70b"]
    default = _plan(spec, "a100-80gb", free=48 * GiB, seq_len_max=True)
    static = sum(default.choice.memory.components[k] for k in ("quantized_weights", "unquantized_weights",
                                                               "adapter_weights", "runtime_overhead"))
    assert default.fits and static > 0.8 * default.budget_bytes
    table = spec.vocab_size * spec.hidden_size * 2
    assert default.choice.memory.details["embed_tokens_host"] == table
    on_card = _plan(spec, "a100-80gb", free=48 * GiB, seq_len_max=True, fixed={"offload_embedding": False})
    assert not on_card.choice.setup.offload_embedding and "embed_tokens_host" not in on_card.choice.memory.details
    assert on_card.choice.setup.seq_len < 12_106 < default.choice.setup.seq_len
    # the host RAM it takes: the table, the token ids and the looked-up rows of one micro-batch
    T = default.choice.setup.seq_len
    assert default.choice.memory.details["host_embedding_bytes"] == table + T * 8 + T * spec.hidden_size * 2
    # the lookup's ids and rows are gone before the first layer input is offloaded: the peak holds
    # the table and the larger of the two
    act = default.choice.memory.details["host_activation_bytes"]
    assert default.choice.host_bytes() == table + max(act, T * 8 + T * spec.hidden_size * 2) == table + act


def test_host_ram_bounds_the_offload_and_says_how_much_it_needs(specs):
    spec = specs["llama-3.1-8b"]
    free = _plan(spec, seq_len_max=True)
    need = free.choice.host_bytes()
    tight = _plan(spec, seq_len_max=True, host_ram_bytes=need // 4)
    assert tight.fits and tight.choice.host_bytes() <= need // 4 and tight.choice.setup.seq_len < free.choice.setup.seq_len
    long = _plan(spec, "rtx-4090", fixed={"seq_len": 65536})
    assert long.choice.setup.offload_activations and long.choice.setup.tiled_mlp  # nothing less fits
    short = _plan(spec, "rtx-4090", fixed={"seq_len": 65536}, host_ram_bytes=long.choice.host_bytes() // 2)
    assert not short.fits and short.host_ram_short_bytes and short.host_ram_short_bytes > long.choice.host_bytes() // 2
    assert any("host RAM" in x and "available" in x for x in short.suggestions)


def test_a_sequence_beyond_the_context_is_warned_with_rope_scaling(specs):
    spec = specs["llama-3.1-8b"]
    r = _plan(spec, fixed={"seq_len": spec.max_position_embeddings * 2})
    # planned as asked (the length `--seq-len max` reports past the context plans the same way)
    assert r.choice.setup.seq_len == spec.max_position_embeddings * 2
    assert any("RoPE scaling" in w and "rope_scaling" in w and "planned as asked" in w for w in r.warnings)


def test_offloading_with_checkpointing_off_is_refused(specs):
    with pytest.raises(ValueError, match="checkpointing"):
        _plan(specs["llama-3.1-8b"], fixed={"offload_activations": True, "grad_checkpointing": False})
