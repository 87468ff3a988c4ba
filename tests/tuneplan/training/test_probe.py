"""The probe's measurement on the CPU: random weights measure what real weights measure, and
real runs keep their `memory_probe` event."""

from __future__ import annotations

import json

import pytest

from planner.setup import TrainSetup
from tuneplan.events import read_events
from tuneplan.training.probe import measure

SETUP = dict(compute_dtype="float32", micro_batch=4, grad_accum=1, seq_len=64, packing=False, grad_checkpointing=False,
             optimizer="adamw", attn="sdpa", fused_ce=True, lora_rank=8, lora_alpha=16, lora_dropout=0.0)


@pytest.mark.parametrize("method,ckpt", [("lora", False), ("qlora", True)])
def test_random_weights_peak_equals_real_weights_peak(tiny_model, method, ckpt):
    setup = TrainSetup(method=method, **{**SETUP, "grad_checkpointing": ckpt})
    config = json.loads((tiny_model / "config.json").read_text())
    real = measure(str(tiny_model), setup, steps=1, warmup_steps=1)
    rand = measure(None, setup, config_dict=config, random_weights=True, steps=1, warmup_steps=1)
    assert real.device == rand.device == "cpu"
    assert real.torch_peak_bytes > 0 and real.peak_step == 2
    assert rand.torch_peak_bytes == real.torch_peak_bytes  # the step's memory does not depend on the values
    assert rand.tokens_per_step == real.tokens_per_step == 4 * 64
    assert any("random weights" in n for n in rand.notes) and not any("random weights" in n for n in real.notes)


def test_random_weights_quantize_on_load_like_real_weights(tiny_model):
    """QLoRA on random weights goes through from_pretrained's bitsandbytes quantizer: the same
    parameter classes, shapes and dtypes as loading the real checkpoint."""
    from tuneplan.training.modeling import load_for_training
    from tuneplan.training.random_weights import load_random_for_training

    setup = TrainSetup(method="qlora", **SETUP)
    real, _, _ = load_for_training(str(tiny_model), setup)
    rand, _ = load_random_for_training(json.loads((tiny_model / "config.json").read_text()), setup)
    shape = lambda m: [(n, type(p).__name__, tuple(p.shape), p.dtype, p.requires_grad)  # noqa: E731
                       for n, p in m.named_parameters()]
    assert shape(rand) == shape(real)
    assert any(t == "Params4bit" for _, t, *_ in shape(rand))


def test_every_real_run_keeps_its_memory_probe_event(trained_lora_run):
    run_dir, result = trained_lora_run
    assert result.exit_code == 0
    probes = [e for e in read_events(run_dir) if e.kind == "memory_probe"]
    assert len(probes) == 1
    e = probes[0]
    assert e.step == 2 and e.device == "cpu" and e.rss_peak_bytes > 0
    assert e.predicted_torch_peak_bytes is not None and e.predicted_device_bytes is not None


# Tiny configs of a fused-expert MoE (transformers 5 `gate_up_proj`) and of tied embeddings:
# the random state dict must follow the model's own keys and leave the tied lm_head out.
_TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
OTHER = {
    "qwen3_moe": dict(model_type="qwen3_moe", **_TINY, head_dim=32, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=256, decoder_sparse_step=1, mlp_only_layers=[]),
    "qwen2_tied": dict(model_type="qwen2", **_TINY, tie_word_embeddings=True),
}


@pytest.mark.parametrize("family,method", [("qwen3_moe", "lora"), ("qwen2_tied", "qlora")])
def test_random_weights_equal_a_saved_checkpoint_on_moe_and_tied_models(tmp_path, family, method):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneplan.training import modeling
    from tuneplan.training.memory_tracker import simple_tokenizer

    config = OTHER[family]
    setup = TrainSetup(method=method, **{**SETUP, "micro_batch": 2})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(modeling.config_from_dict(config), dtype=torch.float32).save_pretrained(tmp_path)
    simple_tokenizer(config["vocab_size"]).save_pretrained(tmp_path)
    real = measure(str(tmp_path), setup, steps=1)
    rand = measure(None, setup, config_dict=config, random_weights=True, steps=1)
    assert rand.torch_peak_bytes == real.torch_peak_bytes > 0


def test_random_state_dict_of_70b_is_lazy_and_holds_every_weight_once():
    """A 70B probe needs only config.json: the state dict is built on the meta device, holds each
    weight once (as a checkpoint does) and materializes nothing until transformers reads it."""
    import math

    import torch

    from planner import catalog
    from tuneplan.training import modeling
    from tuneplan.training.random_weights import RandomTensor, random_state_dict

    entry = catalog.get("llama-3.1-70b")
    cfg = modeling.config_from_dict(dict(entry.config))
    state = random_state_dict(cfg, torch.bfloat16, torch.device("cpu"))
    assert all(isinstance(v, RandomTensor) for v in state.values())
    assert sum(math.prod(v.shape) for v in state.values()) == entry.spec().parameter_count()
    norm = next(v for k, v in state.items() if k.endswith("input_layernorm.weight"))
    assert norm.kind == "ones" and torch.equal(norm[...], torch.ones(norm.shape, dtype=torch.bfloat16))
