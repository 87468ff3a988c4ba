"""The planner's model specs against the real transformers models, built on the meta device.

For every catalog config (and for minimal configs that lean on transformers' defaults) the
planner's exact parameter count must equal `sum(p.numel())`, and the per-layer module
shapes the memory model uses (LoRA-targetable linears, fused MoE experts, routers) must
equal the real modules. peft's own target resolution (`all-linear` and name lists) is
compared with `resolve_lora_targets`. Meta tensors allocate nothing: a 72B model builds in
well under a second.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from torch import nn  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from planner import catalog  # noqa: E402
from planner.spec import EXPERT, LINEAR, ROUTER, resolve_lora_targets, resolve_vision_lora_targets, spec_from_config  # noqa: E402

ENTRIES = catalog.entries()


def _build(config: dict):
    """The model `AutoModelForCausalLM.from_config` builds for a config.json dict, on meta."""
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], **kwargs)
    with torch.device("meta"):
        return cfg, AutoModelForCausalLM.from_config(cfg)


def _decoder_layers(model) -> list[nn.Module]:
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and "vision" not in name:
            return list(module)
    raise AssertionError("no decoder layers found")


def _peft_all_linear(model) -> set[str]:
    """Module names peft's `all-linear` resolves to (its own helper, applied to this model)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    cfg = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM"), model)
    return set(cfg.target_modules)


def _layer_prefix(model) -> str:
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and "vision" not in name:
            return name + "."
    raise AssertionError


def _check_layers(spec, model):
    layers = _decoder_layers(model)
    assert len(layers) == spec.num_layers == len(spec.layers)
    for i, (layer, shapes) in enumerate(zip(layers, spec.layers)):
        real_linears = {
            name: (m.in_features, m.out_features, m.bias is not None)
            for name, m in layer.named_modules()
            if isinstance(m, nn.Linear)
        }
        planned = {m.path: (m.in_features, m.out_features, m.bias) for m in shapes if m.kind == LINEAR}
        assert planned == real_linears, f"layer {i}"
        params = dict(layer.named_parameters())
        for m in shapes:
            if m.kind == EXPERT:
                # fused experts: nn.Parameter (E, out, in)
                assert tuple(params[m.path].shape) == (m.count, m.out_features, m.in_features), m.path
            elif m.kind == ROUTER:
                assert tuple(params[m.path + ".weight"].shape) == (m.out_features, m.in_features), m.path
        layer_total = sum(p.numel() for p in layer.parameters())
        assert layer_total == sum(m.weight_params() for m in shapes) + spec.norm_params_per_layer, f"layer {i}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_catalog_spec_matches_transformers_exactly(entry):
    spec = entry.spec()
    cfg, model = _build(dict(entry.config))
    real = sum(p.numel() for p in model.parameters())
    assert spec.parameter_count() == real
    if entry.official_parameters is not None:  # the model card's count, independent of both
        assert spec.parameter_count() == entry.official_parameters
    _check_layers(spec, model)

    text_cfg = cfg.get_text_config()
    assert spec.num_heads == text_cfg.num_attention_heads
    assert spec.num_kv_heads == text_cfg.num_key_value_heads
    assert spec.vocab_size == text_cfg.vocab_size
    assert spec.max_position_embeddings == text_cfg.max_position_embeddings
    attn = _decoder_layers(model)[0].self_attn
    assert spec.head_dim == attn.head_dim
    real_types = getattr(text_cfg, "layer_types", None)
    if real_types is not None:
        assert list(spec.layer_types) == list(real_types)
    if any(t == "sliding_attention" for t in spec.layer_types):
        assert spec.sliding_window == text_cfg.sliding_window
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert spec.tie_word_embeddings == tied

    # LoRA targets: what peft's all-linear really wraps, per decoder layer and in the vision tower
    prefix = _layer_prefix(model)
    peft_names = _peft_all_linear(model)
    for i, shapes in enumerate(resolve_lora_targets(spec, "all-linear")):
        got = {n[len(f"{prefix}{i}.") :] for n in peft_names if n.startswith(f"{prefix}{i}.")}
        assert got == {m.path for m in shapes}, f"layer {i}"
    vision = {n for n in peft_names if "vision" in n}
    expected_vision = resolve_vision_lora_targets(spec, "all-linear")
    assert len(vision) == sum(m.count for m in expected_vision)
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in vision} == {m.path for m in expected_vision}
    outside = peft_names - vision - {n for n in peft_names if n.startswith(prefix)}
    assert not outside, f"peft adapts modules the spec does not know: {sorted(outside)[:5]}"


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen3-30b-a3b", "phi-3-mini", "gemma-3-12b"])
def test_named_targets_match_peft_matching(name):
    """`resolve_lora_targets` with a name list selects what peft's name matching selects."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    spec = catalog.load_spec(name)
    _, model = _build(dict(catalog.get(name).config))
    prefix = _layer_prefix(model)
    for targets in (["q_proj", "v_proj"], ["o_proj", "down_proj"], ["qkv_proj"], ["self_attn.k_proj"]):
        try:
            ours = resolve_lora_targets(spec, targets)
        except ValueError:
            ours = None
        cfg = LoraConfig(target_modules=targets, task_type="CAUSAL_LM")
        peft_hits = {
            n for n, m in model.named_modules() if isinstance(m, nn.Linear) and check_target_module_exists(cfg, n)
        }
        text_hits = {n for n in peft_hits if n.startswith(prefix)}
        if ours is None:
            # we refuse a list with a name that matches no language-model linear (peft would
            # silently skip it when another name matches)
            lone = [t for t in targets if not any(check_target_module_exists(LoraConfig(target_modules=[t]), n) for n in text_hits)]
            assert lone, targets
            continue
        expected = {f"{prefix}{i}.{m.path}" for i, shapes in enumerate(ours) for m in shapes}
        assert text_hits == expected, targets
        vision_hits = peft_hits - text_hits
        assert len(vision_hits) == sum(m.count for m in resolve_vision_lora_targets(spec, targets)), targets


# Minimal configs: keys left out take the transformers config-class defaults, which the
# planner must mirror. Small layer counts keep the meta build instant; widths are defaults.
MINIMAL = {
    "llama": {"num_hidden_layers": 2},
    "llama-bias": {"model_type": "llama", "num_hidden_layers": 2, "attention_bias": True, "mlp_bias": True, "num_key_value_heads": 8},
    "mistral": {"num_hidden_layers": 2},
    "mixtral": {"num_hidden_layers": 2},
    "qwen2": {"num_hidden_layers": 3, "use_sliding_window": True, "max_window_layers": 1, "sliding_window": 512},
    "qwen3": {"num_hidden_layers": 2, "tie_word_embeddings": True},
    "qwen3-bias": {"model_type": "qwen3", "num_hidden_layers": 2, "attention_bias": True},
    "qwen3_moe": {"num_hidden_layers": 6, "decoder_sparse_step": 2, "mlp_only_layers": [3], "head_dim": 128},
    "qwen3_moe-default-head-dim": {"model_type": "qwen3_moe", "num_hidden_layers": 2},
    "gemma2": {"num_hidden_layers": 3},
    "gemma3_text": {"num_hidden_layers": 7},
    "gemma3": {"text_config": {"num_hidden_layers": 2}, "vision_config": {"num_hidden_layers": 2}},
    "phi3": {"num_hidden_layers": 2, "num_key_value_heads": 8},
}


@pytest.mark.parametrize("key", sorted(MINIMAL))
def test_minimal_configs_use_transformers_defaults(key):
    config = dict(MINIMAL[key])
    config.setdefault("model_type", key)
    spec = spec_from_config(config, key)
    cfg, model = _build(config)
    assert spec.parameter_count() == sum(p.numel() for p in model.parameters())
    _check_layers(spec, model)
    text_cfg = cfg.get_text_config()
    if getattr(text_cfg, "layer_types", None) is not None:
        assert list(spec.layer_types) == list(text_cfg.layer_types)
