"""The planner's model specs against the real transformers models, built on the meta device.

For every catalog config (and for minimal configs that lean on transformers' defaults) the
planner's exact parameter count must equal `sum(p.numel())`, and the per-layer module
shapes the memory model uses (LoRA-targetable linears, fused MoE experts, routers) must
equal the real modules. peft's own target resolution (`all-linear` and name lists) is
compared with `resolve_lora_targets`. Meta tensors allocate nothing: a 72B model builds in
well under a second.
"""

from __future__ import annotations

import json

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



def _reduced(config: dict) -> dict:
    """The same architecture with few layers (LoRA layout does not depend on depth)."""
    config = json.loads(json.dumps(config))
    inner = config.get("text_config", config) if config["model_type"] == "gemma3" else config
    inner["num_hidden_layers"] = min(inner.get("num_hidden_layers", 4), 4)
    if config["model_type"] == "gemma3":
        config.setdefault("vision_config", {})["num_hidden_layers"] = 2
    return config


def _peft_lora(model, targets, rank: int) -> dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Run the real `get_peft_model` (adapters on meta) and return, per owning module path,
    the (lora_A shape, lora_B shape) pairs it created."""
    from peft import LoraConfig, get_peft_model

    modules, params = targets, None
    if not isinstance(targets, str):  # fused expert tensors named directly go to target_parameters
        params = [t for t in targets if t.rsplit(".", 1)[-1] in ("gate_up_proj", "down_proj") and "experts" in t] or None
        modules = [t for t in targets if not params or t not in params]
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules, target_parameters=params, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg, low_cpu_mem_usage=True)
    shapes = dict(peft_model.named_parameters())
    out: dict[str, list] = {}
    for name, p in shapes.items():
        if ".lora_A." in name:
            owner = name.split(".lora_A.")[0].removeprefix("base_model.model.").replace(".base_layer", "")
            b = shapes[name.replace(".lora_A.", ".lora_B.")]
            out.setdefault(owner, []).append((tuple(p.shape), tuple(b.shape)))
    return out


def _expected_lora(m, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    r = rank * m.lora_rank_factor
    if m.kind == EXPERT:  # peft ParamWrapper over (E, out, in): A (r*E, in), B (out, r*E)
        return (r * m.count, m.in_features), (m.out_features, r * m.count)
    return (r, m.in_features), (m.out_features, r)


def _name_lists(spec) -> list[list[str]]:
    lists = [list(spec.attention_module_names())]
    if spec.model_type == "mixtral":
        lists += [["q_proj", "w2", "gate"], ["w1", "w3"], ["experts.gate_up_proj", "o_proj"]]
    elif spec.model_type == "qwen3_moe":
        lists += [["gate_proj", "up_proj", "v_proj"], ["down_proj"], ["experts.gate_up_proj"]]
    elif spec.model_type == "phi3":
        lists.append(["qkv_proj", "down_proj"])
    else:
        lists.append(["q_proj", "v_proj", "down_proj"])
    return lists


# one catalog entry per model_type: the LoRA layout depends on the family, not the size
ONE_PER_TYPE = list({e.config["model_type"]: e for e in ENTRIES}.values())


@pytest.mark.parametrize("entry", ONE_PER_TYPE, ids=[e.name for e in ONE_PER_TYPE])
def test_lora_targets_match_what_peft_creates(entry):
    """`resolve_lora_targets` (+ `resolve_vision_lora_targets`) predicts every adapter the
    real `get_peft_model` creates, with its exact A/B shapes, for all-linear, the attention
    projections and a name list (incl. peft's MoE rewrite onto fused expert tensors)."""
    _check_lora(_reduced(dict(entry.config)), entry.name)


def _check_lora(config: dict, name: str) -> None:
    spec = spec_from_config(config, name)
    rank = 4
    for targets in ["all-linear", *_name_lists(spec)]:
        _, model = _build(config)
        prefix = _layer_prefix(model)
        got = _peft_lora(model, targets, rank)
        expected: dict[str, list] = {}
        for i, shapes in enumerate(resolve_lora_targets(spec, targets)):
            for m in shapes:
                expected.setdefault(f"{prefix}{i}.{m.path.rsplit('.', 1)[0] if m.kind == EXPERT else m.path}", []).append(
                    _expected_lora(m, rank)
                )
        text_got = {k: sorted(v) for k, v in got.items() if "vision" not in k}
        assert text_got == {k: sorted(v) for k, v in expected.items()}, targets
        vision_got = sorted(pair for k, v in got.items() if "vision" in k for pair in v)
        vision_expected = sorted(
            _expected_lora(m, rank) for m in resolve_vision_lora_targets(spec, targets) for _ in range(m.count)
        )
        assert vision_got == vision_expected, targets
        total = sum(m.lora_params(rank) for layer in resolve_lora_targets(spec, targets) for m in layer)
        total += sum(m.lora_params(rank) for m in resolve_vision_lora_targets(spec, targets))
        assert total == sum(a[0] * a[1] + b[0] * b[1] for v in got.values() for a, b in v), targets


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
    if key.startswith(("qwen3_moe", "mixtral", "llama-bias", "phi3")):
        _check_lora(config, key)  # incl. dense mlp_only layers next to MoE layers


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_config_saved_by_transformers_gives_the_same_spec(entry):
    """A config.json written by transformers 5 (`rope_parameters`, `dtype`, explicit
    `layer_types`, every default spelled out) describes the same model."""
    kwargs = {k: v for k, v in entry.config.items() if k != "model_type"}
    saved = AutoConfig.for_model(entry.config["model_type"], **kwargs).to_dict()
    assert spec_from_config(saved, entry.name) == entry.spec()
