"""Steps 1-3 of the training-path contract (`tuneplan.training.modeling`) on the tiny model."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from planner.setup import TrainSetup  # noqa: E402
from tuneplan.errors import UserError  # noqa: E402

BASE = TrainSetup(method="lora", compute_dtype="bfloat16", lora_rank=8, lora_alpha=16, grad_checkpointing=True)


def _base_params(model):
    return [(n, p) for n, p in model.named_parameters() if "lora_" not in n]


def _checkpoint_kwargs(model) -> dict:
    for m in model.modules():
        fn = getattr(m, "_gradient_checkpointing_func", None)
        if fn is not None:
            return dict(fn.keywords)
    raise AssertionError("no module has checkpointing enabled")


def test_lora_freezes_the_base_keeps_it_16_bit_and_makes_fp32_adapters(tiny_model):
    from tuneplan.training.modeling import load_for_training

    model, tokenizer, notes = load_for_training(str(tiny_model), BASE)
    assert tokenizer is not None and any("LoRA r=8" in n for n in notes)
    base = _base_params(model)
    assert base and all(not p.requires_grad for _, p in base)
    assert {p.dtype for _, p in base} == {torch.bfloat16}  # embeddings, lm_head, norms: no upcast
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.requires_grad and p.dtype == torch.float32 for p in adapters)
    assert _checkpoint_kwargs(model) == {"use_reentrant": False}
    assert model.config.use_cache is False


def test_qlora_quantizes_linears_only_and_upcasts_nothing(tiny_model):
    import bitsandbytes as bnb

    from tuneplan.training.modeling import load_for_training

    model, _, _ = load_for_training(str(tiny_model), replace(BASE, method="qlora"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" and m.weight.compress_statistics for m in layers)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert emb.dtype == head.dtype == torch.bfloat16 and {p.dtype for p in norms} == {torch.bfloat16}
    assert getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model.model, "is_loaded_in_4bit", False)


def test_full_trains_every_parameter_without_adapters(tiny_model):
    from tuneplan.training.modeling import load_for_training

    model, _, notes = load_for_training(str(tiny_model), replace(BASE, method="full", grad_checkpointing=False))
    assert not hasattr(model, "peft_config")
    assert all(p.requires_grad for p in model.parameters())


def test_attention_falls_back_with_a_reason():
    from tuneplan.training.modeling import config_from_dict, resolve_attention

    llama = config_from_dict(dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    notes: list[str] = []
    assert resolve_attention(llama, "flash", "cpu", notes) == "sdpa"
    assert "CUDA" in notes[0]
    gemma2 = config_from_dict(dict(model_type="gemma2", vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    notes = []
    assert resolve_attention(gemma2, "sdpa", "cpu", notes) == "eager"
    assert "soft-capping" in notes[0]
    assert resolve_attention(llama, "eager", "cpu", []) == "eager"


MIXTRAL = dict(model_type="mixtral", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1)


def _adapted(model) -> set[str]:
    return {n.split(".lora_")[0].split("layers.0.")[-1] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("targets,expected", [
    ("all-linear", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate",
                    "mlp.experts", "mlp.experts.base_layer"}),
    ("attention", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
    (("w1", "w3", "w2"), {"mlp.experts", "mlp.experts.base_layer"}),  # transformers-4 names, peft rewrites
    (("gate_up_proj", "experts.down_proj"), {"mlp.experts", "mlp.experts.base_layer"}),  # fused tensors
])
def test_moe_targets_reach_the_experts_with_dropout_off(targets, expected):
    from tuneplan.training.modeling import build_from_config

    model, notes = build_from_config(MIXTRAL, replace(BASE, lora_targets=targets, lora_dropout=0.05))
    assert _adapted(model) == expected
    touches_experts = any("experts" in e or e == "mlp.gate" for e in expected)
    assert any("dropout set to 0" in n for n in notes) == touches_experts


@pytest.mark.parametrize("source,setup,words", [
    ("/no/such/model-folder", BASE, "does not exist"),
    (None, replace(BASE, lora_targets=("q_proj", "qkv")), "unknown LoRA target"),
    (None, replace(BASE, lora_rank=0), "lora_rank must be > 0"),
    (None, replace(BASE, compute_dtype="int8"), "compute_dtype"),
])
def test_bad_input_is_one_user_error(tiny_model, source, setup, words):
    from tuneplan.training.modeling import load_for_training

    with pytest.raises(UserError, match=words):
        load_for_training(source or str(tiny_model), setup)
