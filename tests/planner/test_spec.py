"""Pure tests of `planner.spec` (no torch): errors, LoRA target resolution, derived facts."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.spec import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedArchitecture,
    resolve_lora_targets,
    resolve_vision_lora_targets,
    spec_from_config,
)


def test_unsupported_architecture_names_model_type_and_supported_ones():
    with pytest.raises(UnsupportedArchitecture) as err:
        spec_from_config({"model_type": "falcon", "architectures": ["FalconForCausalLM"]}, "tiiuae/falcon-7b")
    message = str(err.value)
    assert "'falcon'" in message and "FalconForCausalLM" in message and "tiiuae/falcon-7b" in message
    for supported in SUPPORTED_MODEL_TYPES:
        assert supported in message


def test_missing_model_type_is_unsupported():
    with pytest.raises(UnsupportedArchitecture, match="None"):
        spec_from_config({"hidden_size": 4096}, "x")


@pytest.mark.parametrize("value", [0, -1, "4096", 4.5, True])
def test_malformed_size_names_the_field(value):
    with pytest.raises(ValueError, match=r"hidden_size.*" + repr(value).replace(".", r"\.")):
        spec_from_config({"model_type": "llama", "hidden_size": value}, "x")


def test_specs_are_hashable_and_frozen():
    spec = catalog.load_spec("phi-3-mini")  # longrope-style nested config values are frozen too
    hash(spec)
    with pytest.raises(AttributeError):
        spec.hidden_size = 1  # type: ignore[misc]


def test_all_linear_and_attention_targets():
    spec = catalog.load_spec("llama-3.1-8b")
    every = resolve_lora_targets(spec, "all-linear")
    assert len(every) == spec.num_layers
    assert [m.name for m in every[0]] == list(spec.lora_module_names())
    attention = resolve_lora_targets(spec, "attention")
    assert [m.name for m in attention[0]] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_lora_targets(spec, "q_proj, v_proj") == resolve_lora_targets(spec, ["q_proj", "v_proj"])
    assert [m.name for m in resolve_lora_targets(spec, ["self_attn.q_proj"])[0]] == ["q_proj"]


def test_unknown_target_names_the_real_modules():
    spec = catalog.load_spec("phi-3-mini")
    with pytest.raises(ValueError) as err:
        resolve_lora_targets(spec, ["q_proj", "v_proj"])
    message = str(err.value)
    assert "q_proj" in message and "qkv_proj" in message and "gate_up_proj" in message
    assert [m.name for m in resolve_lora_targets(spec, "attention")[0]] == ["qkv_proj", "o_proj"]
    with pytest.raises(ValueError, match="empty"):
        resolve_lora_targets(spec, " , ")


def test_moe_experts_are_adapted_under_peft_names_and_never_quantized():
    spec = catalog.load_spec("qwen3-30b-a3b")
    assert spec.is_moe() and spec.num_experts == 128 and spec.experts_per_token == 8
    assert spec.lora_module_names() == ("q_proj", "k_proj", "v_proj", "o_proj", "gate", "gate_proj", "up_proj", "down_proj")
    experts = [m for m in spec.layers[0] if m.kind == "expert"]
    assert {m.count for m in experts} == {128} and {m.active for m in experts} == {8}
    assert not any(m.quantizable() for m in spec.layers[0] if m.kind != "linear")
    # all-linear adapts the router and both fused expert tensors (gate_up at twice the rank)
    adapted = {m.name: m for m in resolve_lora_targets(spec, "all-linear")[0]}
    assert set(adapted) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "experts.gate_up_proj", "experts.down_proj"}
    gate_up = adapted["experts.gate_up_proj"]
    assert gate_up.lora_rank_factor == 2
    assert gate_up.lora_params(8) == 128 * 16 * (2048 + 2 * 768)
    # names that transformers fused must come together, as peft demands
    with pytest.raises(ValueError, match="needs up_proj"):
        resolve_lora_targets(spec, ["gate_proj"])
    assert [m.name for m in resolve_lora_targets(spec, ["down_proj"])[0]] == ["experts.down_proj"]
    # the fused tensor named directly: target_parameters at the plain rank
    (direct,) = resolve_lora_targets(spec, ["gate_up_proj"])[0]
    assert direct.name == "experts.gate_up_proj" and direct.lora_rank_factor == 1
    # one token goes through 8 of 128 experts: ~3B of ~30B parameters
    assert 3.0e9 < spec.active_parameter_count() < 3.6e9 < spec.parameter_count()


def test_mixtral_uses_its_transformers_4_names():
    spec = catalog.load_spec("mixtral-8x7b")
    assert set(spec.lora_module_names()) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "w1", "w3", "w2"}
    with pytest.raises(ValueError, match="w1.*experts.gate_up_proj"):
        resolve_lora_targets(spec, ["fc1"])
    assert [m.name for m in resolve_lora_targets(spec, ["w1", "w3"])[0]] == ["experts.gate_up_proj"]
    with pytest.raises(ValueError, match="w1 needs w3"):
        resolve_lora_targets(spec, ["w1"])


def test_qwen3_moe_sparse_step_and_mlp_only_layers():
    spec = spec_from_config(
        {"model_type": "qwen3_moe", "num_hidden_layers": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]}, "m"
    )
    kinds = [{m.kind for m in layer} for layer in spec.layers]
    assert kinds == [{"linear"}, {"linear", "expert", "router"}, {"linear"}, {"linear"}]
    # peft's MoE rewrite leaves the dense MLPs of the other layers without adapters
    assert [len(layer) for layer in resolve_lora_targets(spec, "all-linear")] == [4, 7, 4, 4]


def test_family_features():
    qwen2 = catalog.load_spec("qwen2.5-7b")
    assert {m.name: m.bias for m in qwen2.layers[0]}["q_proj"] and not {m.name: m.bias for m in qwen2.layers[0]}["o_proj"]
    assert catalog.load_spec("qwen2.5-0.5b").tie_word_embeddings
    qwen3 = catalog.load_spec("qwen3-8b")
    assert qwen3.qk_norm and qwen3.norm_params_per_layer == 2 * qwen3.hidden_size + 2 * qwen3.head_dim
    gemma2 = catalog.load_spec("gemma-2-9b")
    assert gemma2.norms_per_layer == 4 and gemma2.attn_logit_softcapping == 50.0 and gemma2.final_logit_softcapping == 30.0
    assert gemma2.layer_types[:2] == ("sliding_attention", "full_attention") and gemma2.sliding_window == 4096
    assert gemma2.torch_dtype == "float32"
    gemma3 = catalog.load_spec("gemma-3-27b")
    assert gemma3.is_multimodal() and gemma3.vision_params > 0
    assert gemma3.layer_types[5] == "full_attention" and gemma3.layer_types[4] == "sliding_attention"
    assert gemma3.head_dim == 128 and gemma3.max_position_embeddings == 131072 and gemma3.sliding_window == 1024
    assert {m.name for m in resolve_vision_lora_targets(gemma3, "all-linear")} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert resolve_vision_lora_targets(catalog.load_spec("llama-3.2-1b"), "all-linear") == ()
    nemo = catalog.load_spec("mistral-nemo-12b")
    assert nemo.head_dim == 128 != nemo.hidden_size // nemo.num_heads
    llama2 = catalog.load_spec("llama-2-7b")
    assert llama2.sliding_window is None and llama2.torch_dtype == "float16" and llama2.max_position_embeddings == 4096
    assert dict(catalog.load_spec("llama-3.1-8b").extra)["rope_theta"] == 500000.0
