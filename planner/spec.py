"""Model specs built from a Hugging Face `config.json` dict.

A `ModelSpec` holds what the memory and FLOP models need: the shapes of every linear
module a LoRA adapter can target, the embedding / lm_head / norm parameters, attention
geometry and MoE routing. Parameter counts are exact: `tests/planner/test_spec_exact.py`
checks them against `sum(p.numel())` of the transformers model built on the meta device.

Entry points
------------
- `spec_from_config(config, name) -> ModelSpec`: the supported families are listed in
  `SUPPORTED_MODEL_TYPES` (llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma2,
  gemma3_text, gemma3, phi3). Anything else raises `UnsupportedArchitecture` naming the
  `model_type` and the supported ones; nothing is guessed. Keys a `config.json` leaves out
  take the defaults of the transformers configuration class of that family (transformers
  5.x `models/<family>/configuration_<family>.py`), as `from_pretrained` would.
- `resolve_lora_targets(spec, targets) -> tuple[tuple[LinearShape, ...], ...]`: for each
  decoder layer, the linear modules a LoRA `target_modules` value adapts. `targets` is
  `"all-linear"` (peft's shorthand: every `nn.Linear` except the lm_head, plus on MoE models
  the experts and router, see below), `"attention"` (the attention projections; training
  passes `spec.attention_module_names()` to peft), or module names (a list, or one
  comma-separated string) matched the way peft matches them (the last dotted component of the
  module path, or a dotted suffix such as `self_attn.q_proj`). An unknown name raises
  `ValueError` naming the real ones (`spec.lora_module_names()`). Expected training-side
  mapping: names go to peft's `target_modules` as given, except fused expert tensors named
  directly (`gate_up_proj`, `experts.down_proj` on MoE models), which go to
  `target_parameters`.

Mixture-of-experts models (mixtral, qwen3_moe) in transformers 5.x store the experts as two
fused 3-D `nn.Parameter`s per layer (`mlp.experts.gate_up_proj` of shape `(E, 2*I, H)` and
`mlp.experts.down_proj` of shape `(E, H, I)`; `transformers/models/mixtral/modeling_mixtral.py`
`MixtralExperts`) and the router as a plain parameter (`mlp.gate.weight`, `(E, H)`, module
`*TopKRouter`). None is an `nn.Linear`: bitsandbytes never quantizes them (they stay in the
compute dtype under QLoRA; `LinearShape.quantizable()` is False). peft 0.21 nevertheless adapts
them: for these model types `get_peft_model` first rewrites the LoRA config
(`peft/utils/transformers_weight_conversion.py` `_convert_peft_config_moe`), mapping the
transformers-4 module names (`all-linear`, or mixtral's `w1`/`w3`/`w2`/`gate`, qwen3_moe's
`gate_proj`/`up_proj`/`down_proj`/`gate`) to `target_parameters` on the fused tensors, with
rank and alpha doubled on `gate_up_proj` (two fused matrices). Each such `LinearShape` lists
the names that select it in `lora_aliases` and the rank multiplier in `lora_rank_factor`; a
LoRA on `count` experts holds `count * rank * (in + out)` parameters, exactly as `count`
separate adapters would. The same rewrite strips those names from `target_modules`, so the
dense MLP of a qwen3_moe `mlp_only_layers` layer is never adapted (`lora_targetable=False`).
`tests/planner/test_spec_exact.py` checks all of this against real `get_peft_model` calls.

Gemma 3 multimodal configs (`model_type: gemma3`, the 4B-27B checkpoints) describe the
language model from their `text_config`. `AutoModelForCausalLM` loads these checkpoints as
`Gemma3ForConditionalGeneration`, vision tower included, so `vision_params` (SigLIP tower +
projector, counted exactly) is part of `parameter_count()`; `language_model_parameter_count()`
leaves it out. Training is text only: the vision tower holds frozen weights but sees no
tokens. peft's `all-linear` also adapts its linears (`resolve_vision_lora_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping


class UnsupportedArchitecture(ValueError):
    """The config's `model_type` is not one the planner models exactly."""


SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi3",
)
"""`config.json` `model_type` values `spec_from_config` models exactly."""

LINEAR = "linear"
EXPERT = "expert"
ROUTER = "router"


@dataclass(frozen=True)
class LinearShape:
    """One kind of linear module inside a decoder layer (as named in transformers)."""

    name: str
    """Module attribute name, e.g. `q_proj`, `gate_proj`, `experts.down_proj`."""
    in_features: int
    out_features: int
    bias: bool
    count: int = 1
    """Instances per layer (the number of experts for expert weights)."""
    active: int = 1
    """Instances a token passes through (experts per token for routed experts)."""
    lora_targetable: bool = True
    """Whether peft can wrap it in a LoRA layer (routers stay frozen and untouched)."""
    path: str = ""
    """Dotted path inside the decoder layer, e.g. `self_attn.q_proj`, `mlp.experts.gate_up_proj`."""
    kind: str = LINEAR
    """`linear` (an `nn.Linear`: quantized by bitsandbytes under QLoRA), `expert` (one fused
    3-D `nn.Parameter` holding `count` experts' matrices) or `router` (the MoE router's
    weight matrix, a plain parameter). Experts and routers are never quantized; peft adapts
    them through `target_parameters` (see the module docstring)."""
    lora_aliases: tuple[str, ...] = ()
    """Names in a LoRA target list that select this module when they differ from `name`
    (MoE parameters: peft's transformers-4 names, e.g. `("w1", "w3")` for mixtral's fused
    `experts.gate_up_proj`). All of them must be targeted together."""
    lora_rank_factor: int = 1
    """peft adapts this module with `rank * lora_rank_factor` (and alpha times the same):
    2 for a fused `gate_up_proj` of experts (peft `rank_pattern`), 1 otherwise."""

    def target_names(self) -> tuple[str, ...]:
        """The names a LoRA target list uses to select this module."""
        return self.lora_aliases or (self.name,)

    def lora_params(self, rank: int) -> int:
        """Parameters of the LoRA adapter on all `count` instances at `rank`
        (A: `rank' x in`, B: `out x rank'` per instance, `rank' = rank * lora_rank_factor`)."""
        r = rank * self.lora_rank_factor
        return self.count * r * (self.in_features + self.out_features)

    def weight_params(self) -> int:
        """Weight (and bias) parameters of all instances in one layer."""
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))

    def quantizable(self) -> bool:
        """Whether bitsandbytes replaces it with a 4-bit layer (only `nn.Linear` modules)."""
        return self.kind == LINEAR


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a decoder-only LLM. All sizes are element counts."""

    name: str
    """Catalog name, Hub id or folder the spec came from."""
    model_type: str
    """`config.json` `model_type`, e.g. `llama`, `qwen3_moe` (`gemma3` for the multimodal
    Gemma 3 checkpoints, whose text part is described)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    """Dense MLP width (for MoE layers see `moe_intermediate_size`)."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    """Longest context the checkpoint's rope setup is configured for, in tokens."""
    torch_dtype: str = "bfloat16"
    """dtype the checkpoint is stored in."""
    layers: tuple[tuple[LinearShape, ...], ...] = field(default_factory=tuple)
    """Per decoder layer, the linear modules it holds (layers may differ, e.g. MoE every n)."""
    norm_params_per_layer: int = 0
    """Parameters of all norms inside one decoder layer (incl. per-head q/k norms)."""
    final_norm_params: int = 0
    num_experts: int = 0
    experts_per_token: int = 0
    sliding_window: int | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    extra: tuple[tuple[str, object], ...] = ()
    """Other config facts kept for explanations (read-only pairs)."""
    moe_intermediate_size: int = 0
    """Width of one routed expert's MLP (0 for dense models)."""
    num_shared_experts: int = 0
    """Always-active shared experts per MoE layer (none of the supported families has any:
    mixtral and qwen3_moe route every token to `experts_per_token` of `num_experts`)."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (qwen3, gemma3): two `head_dim` weights per layer."""
    norms_per_layer: int = 2
    """Hidden-size norms per decoder layer (2 for llama-style, 4 for gemma2/3)."""
    layer_types: tuple[str, ...] = ()
    """Per layer `full_attention` or `sliding_attention` (sliding layers attend to at most
    `sliding_window` tokens)."""
    hidden_act: str = "silu"
    """MLP activation (`silu`, `gelu_pytorch_tanh`, ...)."""
    vision_params: int = 0
    """Parameters of the vision tower and projector a multimodal checkpoint loads with the
    language model (`AutoModelForCausalLM` builds `Gemma3ForConditionalGeneration`); 0 for
    text-only models. Included in `parameter_count()`."""
    vision_linears: tuple[LinearShape, ...] = ()
    """The `nn.Linear` modules of the vision encoder, `count` = number of vision layers
    (subset of `vision_params`). peft's `all-linear` adapts them too, and names such as
    `q_proj` match them as well (see `resolve_vision_lora_targets`)."""

    # -- parameter counts (exact) ---------------------------------------------------
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_head_params(self) -> int:
        """0 when the lm_head shares the embedding matrix."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def linear_params(self) -> int:
        return sum(m.weight_params() for layer in self.layers for m in layer)

    def norm_params(self) -> int:
        return self.norm_params_per_layer * self.num_layers + self.final_norm_params

    def language_model_parameter_count(self) -> int:
        """Parameters of the decoder-only language model (no vision tower)."""
        return self.embedding_params() + self.lm_head_params() + self.linear_params() + self.norm_params()

    def parameter_count(self) -> int:
        """Exactly `sum(p.numel() for p in model.parameters())` of the model
        `AutoModelForCausalLM.from_config` builds (vision tower included for multimodal ones)."""
        return self.language_model_parameter_count() + self.vision_params

    # -- derived facts ----------------------------------------------------------------
    def is_moe(self) -> bool:
        """Whether any layer routes tokens to experts."""
        return self.num_experts > 0 and any(m.kind == EXPERT for layer in self.layers for m in layer)

    def active_parameter_count(self) -> int:
        """Parameters one token passes through (routed experts counted `active` times, not
        `count`); equals `parameter_count()` for dense models. Used for FLOPs."""
        total = self.embedding_params() + self.lm_head_params() + self.norm_params()  # text tokens only
        for layer in self.layers:
            for m in layer:
                per = m.in_features * m.out_features + (m.out_features if m.bias else 0)
                total += per * (m.active if m.kind == EXPERT else m.count)
        return total

    def lora_module_names(self) -> tuple[str, ...]:
        """Names of the modules a LoRA `target_modules` list can name, in layer order."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            for m in layer:
                if m.lora_targetable:
                    for n in m.target_names():
                        seen.setdefault(n, None)
        return tuple(seen)

    def attention_module_names(self) -> tuple[str, ...]:
        """The attention projections (`q_proj, k_proj, v_proj, o_proj`, or phi3's `qkv_proj, o_proj`)."""
        return tuple(n for n in self.lora_module_names() if n in _ATTENTION_NAMES)

    def is_multimodal(self) -> bool:
        """A multimodal checkpoint (a vision tower is loaded next to the language model)."""
        return self.vision_params > 0


_ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")


# -- LoRA target resolution -------------------------------------------------------------
def _split_targets(targets: str | Iterable[str]) -> list[str]:
    if isinstance(targets, str):
        items = [t.strip() for t in targets.split(",")]
    else:
        items = [str(t).strip() for t in targets]
    return [t for t in items if t]


def resolve_lora_targets(spec: ModelSpec, targets: str | Iterable[str]) -> tuple[tuple[LinearShape, ...], ...]:
    """For each decoder layer, the `LinearShape`s a LoRA adapter with `targets` wraps.

    `targets`: `"all-linear"` (peft `INCLUDE_LINEAR_LAYERS_SHORTHAND`: every `nn.Linear`
    but the lm_head, see `peft/tuners/tuners_utils.py` `_maybe_include_all_linear_layers`),
    `"attention"` (the attention projections), or module names as peft's
    `target_modules` list takes them (a name matches a module whose path ends with it:
    `q_proj`, `self_attn.q_proj`). Raises `ValueError` naming the real module names when a
    name matches no LoRA-targetable module (peft raises too when nothing matches; we are
    stricter so a typo is never silently ignored), or when `targets` is empty.
    """
    items = _split_targets(targets)
    if not items:
        raise ValueError(f"LoRA targets are empty; use all-linear, attention or names from: {', '.join(spec.lora_module_names())}")
    lowered = [t.lower() for t in items]
    if len(items) == 1 and lowered[0] in ("all-linear", "all_linear"):
        return tuple(tuple(m for m in layer if m.lora_targetable) for layer in spec.layers)
    if len(items) == 1 and lowered[0] == "attention":
        return tuple(tuple(m for m in layer if m.lora_targetable and m.name in _ATTENTION_NAMES) for layer in spec.layers)

    def via_alias(target: str, m: LinearShape) -> bool:
        # peft `_convert_peft_config_moe`: `target == old or target.endswith("." + old)`
        return any(target == a or target.endswith("." + a) for a in m.lora_aliases)

    def via_tensor(target: str, m: LinearShape) -> bool:
        # a fused expert tensor named directly (`gate_up_proj`, `experts.down_proj`): our
        # training code passes it to peft as `target_parameters` (rank unchanged)
        return m.kind == EXPERT and (m.path == target or m.path.endswith("." + target))

    def matches(target: str, m: LinearShape) -> bool:
        if m.kind != LINEAR or m.lora_aliases:
            return via_alias(target, m) or via_tensor(target, m)
        full = m.path or m.name
        return full == target or full.endswith("." + target) or m.name == target

    unknown = [t for t in items if not any(m.lora_targetable and matches(t, m) for layer in spec.layers for m in layer)]
    if unknown:
        experts = sorted({m.name for layer in spec.layers for m in layer if m.kind == EXPERT})
        fused = f" or the fused expert tensors {', '.join(experts)}" if experts else ""
        raise ValueError(
            f"unknown LoRA target module(s) {', '.join(unknown)} for {spec.name} ({spec.model_type}); "
            f"its targets are: {', '.join(spec.lora_module_names())}{fused} (or use all-linear / attention)"
        )
    for layer in spec.layers:
        for m in layer:
            if m.lora_targetable and len(m.lora_aliases) > 1:
                hit = [a for a in m.lora_aliases if any(t == a or t.endswith("." + a) for t in items)]
                if hit and len(hit) < len(m.lora_aliases):
                    missing = [a for a in m.lora_aliases if a not in hit]
                    raise ValueError(
                        f"LoRA target {', '.join(hit)} needs {', '.join(missing)} too: transformers fuses them "
                        f"into {m.name} of {spec.name}, so peft adapts them together"
                    )

    def chosen(m: LinearShape) -> LinearShape:
        # the doubled rank comes only from peft's rewrite of the transformers-4 names
        if m.lora_rank_factor > 1 and not any(via_alias(t, m) for t in items):
            return replace(m, lora_rank_factor=1)
        return m

    return tuple(
        tuple(chosen(m) for m in layer if m.lora_targetable and any(matches(t, m) for t in items))
        for layer in spec.layers
    )


def resolve_vision_lora_targets(spec: ModelSpec, targets: str | Iterable[str]) -> tuple[LinearShape, ...]:
    """The vision-encoder linears (each with `count` = vision layers) that peft also wraps
    for `targets` on a multimodal checkpoint. peft matches by module name over the whole
    model, so `all-linear` adapts every vision linear and a name list (or `attention`, which
    expands to the language model's projection names) adapts the vision modules of the same
    name (`q_proj`, `k_proj`, `v_proj`; the vision output projection is `out_proj`). Empty
    for text-only models. Validate names with `resolve_lora_targets` first."""
    if not spec.vision_linears:
        return ()
    items = [t.lower() for t in _split_targets(targets)]
    if len(items) == 1 and items[0] in ("all-linear", "all_linear"):
        return spec.vision_linears
    if len(items) == 1 and items[0] == "attention":
        items = list(spec.attention_module_names())
    return tuple(m for m in spec.vision_linears if any(m.path == t or m.path.endswith("." + t) or m.name == t for t in items))


def _siglip_vision(vc: Mapping[str, object], text_hidden: int) -> tuple[int, tuple[LinearShape, ...]]:
    """Parameters of a SigLIP vision tower + Gemma 3 projector, and its encoder linears.

    Mirrors transformers 5.x `models/siglip/modeling_siglip.py` (`SiglipVisionEmbeddings`:
    conv patch embedding with bias and a learned position embedding per patch;
    `SiglipEncoderLayer`: two LayerNorms with bias, q/k/v/out_proj and fc1/fc2 with bias;
    post LayerNorm; optional attention-pooling head) and `Gemma3MultiModalProjector`
    (`mm_input_projection_weight` (Dv, Dt) and an RMSNorm of Dv). Defaults are
    `SiglipVisionConfig`'s."""
    if vc.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise UnsupportedArchitecture(f"vision_config model_type {vc.get('model_type')!r} is not supported (only siglip_vision_model)")

    def g(key: str, default: int) -> int:
        value = vc.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else default

    d, i, n = g("hidden_size", 768), g("intermediate_size", 3072), g("num_hidden_layers", 12)
    channels, image, patch = g("num_channels", 3), g("image_size", 224), g("patch_size", 16)
    patches = (image // patch) ** 2
    embeddings = channels * patch * patch * d + d + patches * d
    linears = (
        LinearShape("q_proj", d, d, True, count=n, path="self_attn.q_proj"),
        LinearShape("k_proj", d, d, True, count=n, path="self_attn.k_proj"),
        LinearShape("v_proj", d, d, True, count=n, path="self_attn.v_proj"),
        LinearShape("out_proj", d, d, True, count=n, path="self_attn.out_proj"),
        LinearShape("fc1", d, i, True, count=n, path="mlp.fc1"),
        LinearShape("fc2", i, d, True, count=n, path="mlp.fc2"),
    )
    layers = sum(m.weight_params() for m in linears) + n * 4 * d  # layer_norm1/2: weight + bias
    post = 2 * d
    head = 0
    if vc.get("vision_use_head", True):
        # SiglipMultiheadAttentionPoolingHead: probe (1,1,D), nn.MultiheadAttention
        # (in_proj 3D x D + 3D, out_proj D x D + D), LayerNorm, SiglipMLP (fc1, fc2).
        head = d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * i + i + i * d + d)
    projector = d * text_hidden + d
    return embeddings + layers + post + head + projector, linears


# -- config.json -> ModelSpec -----------------------------------------------------------
# Defaults of the transformers 5.x configuration classes (models/<family>/configuration_*.py)
# for the keys read below, used when a config.json leaves a key out.
_DEFAULTS: dict[str, dict[str, object]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=2048, tie_word_embeddings=False,
                  hidden_act="silu"),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                    tie_word_embeddings=False, sliding_window=4096, hidden_act="silu"),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                    tie_word_embeddings=False, num_experts_per_tok=2, num_local_experts=8, hidden_act="silu"),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28, hidden_act="silu"),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28, hidden_act="silu"),
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768,
                      tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                      decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8,
                      num_experts=128, hidden_act="silu"),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                   tie_word_embeddings=True, sliding_window=4096, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh"),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        max_position_embeddings=131072, tie_word_embeddings=True, sliding_window=4096,
                        final_logit_softcapping=None, attn_logit_softcapping=None,
                        hidden_activation="gelu_pytorch_tanh"),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, max_position_embeddings=4096, tie_word_embeddings=False,
                 hidden_act="silu"),
}


class _Cfg:
    """A config dict read with the family's transformers defaults."""

    def __init__(self, raw: Mapping[str, object], family: str):
        self.raw = raw
        self.defaults = _DEFAULTS[family]

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get(self, key: str, default: object = None) -> Any:
        """The config's value (an explicit `null` stays None), else the class default: parsed
        JSON, so any type; the callers convert or check it."""
        if key in self.raw:
            return self.raw[key]
        return self.defaults.get(key, default)

    def int(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.json field {key} must be a positive integer (got {value!r})")
        return value


def _dense_mlp(cfg_hidden: int, inter: int, bias: bool = False, fused: bool = False) -> list[LinearShape]:
    if fused:  # phi3 `Phi3MLP`: gate_up_proj (H -> 2I) then down_proj
        return [
            LinearShape("gate_up_proj", cfg_hidden, 2 * inter, bias, path="mlp.gate_up_proj"),
            LinearShape("down_proj", inter, cfg_hidden, bias, path="mlp.down_proj"),
        ]
    return [
        LinearShape("gate_proj", cfg_hidden, inter, bias, path="mlp.gate_proj"),
        LinearShape("up_proj", cfg_hidden, inter, bias, path="mlp.up_proj"),
        LinearShape("down_proj", inter, cfg_hidden, bias, path="mlp.down_proj"),
    ]


# peft 0.21 `_MOE_TARGET_MODULE_MAPPING` (transformers-4 names -> fused transformers-5 tensors)
_MOE_ALIASES = {
    "mixtral": {"gate": ("gate",), "gate_up_proj": ("w1", "w3"), "down_proj": ("w2",)},
    "qwen3_moe": {"gate": ("gate",), "gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)},
}


def _moe_mlp(family: str, hidden: int, expert_inter: int, experts: int, top_k: int) -> list[LinearShape]:
    # transformers 5.x `MixtralExperts` / `Qwen3MoeExperts`: gate_up_proj (E, 2I, H),
    # down_proj (E, H, I) as nn.Parameter; router `*TopKRouter.weight` (E, H), no bias.
    aliases = _MOE_ALIASES[family]
    return [
        LinearShape("gate", hidden, experts, False, path="mlp.gate", kind=ROUTER, lora_aliases=aliases["gate"]),
        LinearShape("experts.gate_up_proj", hidden, 2 * expert_inter, False, count=experts, active=top_k,
                    path="mlp.experts.gate_up_proj", kind=EXPERT, lora_aliases=aliases["gate_up_proj"],
                    lora_rank_factor=len(aliases["gate_up_proj"])),
        LinearShape("experts.down_proj", expert_inter, hidden, False, count=experts, active=top_k,
                    path="mlp.experts.down_proj", kind=EXPERT, lora_aliases=aliases["down_proj"]),
    ]


def _freeze(value: object) -> object:
    """Nested JSON made hashable (dicts to sorted item tuples, lists to tuples): specs are frozen."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# transformers 5.x `default_theta` where a config.json may omit rope_theta (mixtral:
# MixtralConfig.default_theta; gemma3: Gemma3TextConfig.default_theta["global"]; the others
# use `PreTrainedConfig`'s 10_000).
_DEFAULT_THETA = {"mixtral": 1_000_000.0, "gemma3_text": 1_000_000.0}


def _rope_facts(config: Mapping[str, object], family: str) -> list[tuple[str, object]]:
    """`rope_theta` and a non-default rope scaling, from either spelling: the classic
    top-level `rope_theta` + `rope_scaling`, or transformers 5's `rope_parameters` (per
    attention type for gemma3: the full-attention one is reported)."""
    theta = config.get("rope_theta", _DEFAULT_THETA.get(family, 10_000.0))
    scaling = config.get("rope_scaling")
    params = config.get("rope_parameters")
    if isinstance(params, Mapping):
        full = params.get("full_attention")
        if isinstance(full, Mapping):
            params = full
        theta = params.get("rope_theta", theta)
        scaling = params
    facts: list[tuple[str, object]] = []
    if isinstance(theta, (int, float)) and not isinstance(theta, bool):
        facts.append(("rope_theta", float(theta)))
    if isinstance(scaling, Mapping):
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind and kind != "default":
            facts.append(("rope_scaling", _freeze({k: v for k, v in scaling.items() if k != "rope_theta"})))
    return facts


def _dtype_of(config: Mapping[str, object], fallback: Mapping[str, object] | None = None) -> str:
    for source in (config, fallback or {}):
        for key in ("dtype", "torch_dtype"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value.replace("torch.", "")
    return "bfloat16"


def _context_length(cfg: _Cfg) -> int:
    return cfg.int("max_position_embeddings")


def spec_from_config(config: Mapping[str, object], name: str) -> ModelSpec:
    """Build the exact `ModelSpec` of a Hugging Face `config.json` dict.

    `name` labels the spec (catalog name, Hub id or folder). Raises
    `UnsupportedArchitecture` for a `model_type` outside `SUPPORTED_MODEL_TYPES` and
    `ValueError` (naming the field) for a malformed config. Sizes are element counts;
    the per-layer module list mirrors the transformers 5.x modeling files of the family.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{name}: config.json must be a JSON object (got {type(config).__name__})")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        architectures = config.get("architectures")
        arch = f" (architectures: {', '.join(map(str, architectures))})" if isinstance(architectures, list) and architectures else ""
        raise UnsupportedArchitecture(
            f"{name}: model_type {model_type!r}{arch} is not supported; tuneplan models exactly: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    multimodal = False
    outer = config
    if model_type == "gemma3":
        # Gemma3ForConditionalGeneration: the language model is `text_config` (gemma3_text);
        # keys it leaves out take Gemma3TextConfig defaults.
        text = config.get("text_config") or {}
        if not isinstance(text, Mapping):
            raise ValueError(f"{name}: config.json field text_config must be an object")
        config = dict(text)
        config.setdefault("model_type", "gemma3_text")
        if "tie_word_embeddings" not in config and outer.get("tie_word_embeddings") is not None:
            config["tie_word_embeddings"] = outer["tie_word_embeddings"]
        multimodal = True
    family = "gemma3_text" if model_type == "gemma3" else str(model_type)
    cfg = _Cfg(config, family)

    vocab = cfg.int("vocab_size")
    hidden = cfg.int("hidden_size")
    inter = cfg.int("intermediate_size")
    n_layers = cfg.int("num_hidden_layers")
    heads = cfg.int("num_attention_heads")
    kv_heads = cfg.int("num_key_value_heads") if cfg.get("num_key_value_heads") is not None else heads
    # head_dim: explicit when given, else hidden // heads (e.g. LlamaConfig.__post_init__,
    # MixtralAttention: `getattr(config, "head_dim", None) or hidden // heads`).
    head_dim = cfg.int("head_dim") if cfg.get("head_dim") is not None else hidden // heads
    tie = bool(cfg.get("tie_word_embeddings"))
    hidden_act = str(cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu")

    # Attention projections. Bias: llama/qwen3/gemma `attention_bias` on q/k/v/o; qwen2 always
    # on q/k/v and never on o (Qwen2Attention); mistral/mixtral/phi3 never.
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    if family == "phi3":
        attn = [
            LinearShape("qkv_proj", hidden, q_out + 2 * kv_out, False, path="self_attn.qkv_proj"),
            LinearShape("o_proj", q_out, hidden, False, path="self_attn.o_proj"),
        ]
    else:
        if family == "qwen2":
            qkv_bias, o_bias = True, False
        elif family in ("mistral", "mixtral"):
            qkv_bias = o_bias = False
        else:
            qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
        attn = [
            LinearShape("q_proj", hidden, q_out, qkv_bias, path="self_attn.q_proj"),
            LinearShape("k_proj", hidden, kv_out, qkv_bias, path="self_attn.k_proj"),
            LinearShape("v_proj", hidden, kv_out, qkv_bias, path="self_attn.v_proj"),
            LinearShape("o_proj", q_out, hidden, o_bias, path="self_attn.o_proj"),
        ]

    # MLP per layer.
    num_experts = top_k = moe_inter = 0
    mlp_bias = bool(cfg.get("mlp_bias", False)) if family == "llama" else False
    layers: list[tuple[LinearShape, ...]] = []
    if family == "mixtral":
        num_experts = cfg.int("num_local_experts")
        top_k = cfg.int("num_experts_per_tok")
        moe_inter = inter
        layers = [tuple(attn + _moe_mlp(family, hidden, inter, num_experts, top_k))] * n_layers
    elif family == "qwen3_moe":
        num_experts = int(cfg.get("num_experts") or 0)
        top_k = cfg.int("num_experts_per_tok")
        moe_inter = cfg.int("moe_intermediate_size")
        step = int(cfg.get("decoder_sparse_step") or 1)
        mlp_only = set(cfg.get("mlp_only_layers") or [])
        moe_layer = tuple(attn + _moe_mlp(family, hidden, moe_inter, num_experts, top_k)) if num_experts else ()
        # peft's MoE rewrite moves gate_proj/up_proj/down_proj (and all-linear) onto the
        # experts' parameters, so the dense MLP of an mlp_only layer is never adapted.
        dense_layer = tuple(attn + [replace(m, lora_targetable=False) for m in _dense_mlp(hidden, inter)])
        # Qwen3MoeDecoderLayer: sparse when not in mlp_only_layers and (i + 1) % step == 0.
        layers = [
            moe_layer if (i not in mlp_only and num_experts > 0 and (i + 1) % step == 0) else dense_layer
            for i in range(n_layers)
        ]
    else:
        layers = [tuple(attn + _dense_mlp(hidden, inter, mlp_bias, fused=family == "phi3"))] * n_layers

    # Norms: RMSNorm weights of `hidden` each; gemma2/3 have four per layer
    # (input, post_attention, pre_feedforward, post_feedforward); qwen3/qwen3_moe/gemma3 add
    # q_norm and k_norm over head_dim.
    norms = 4 if family in ("gemma2", "gemma3_text") else 2
    qk_norm = family in ("qwen3", "qwen3_moe", "gemma3_text")
    norm_per_layer = norms * hidden + (2 * head_dim if qk_norm else 0)

    # Sliding window and which layers use it.
    sliding: int | None = None
    layer_types: list[str] = []
    if isinstance(cfg.get("layer_types"), list) and len(cfg.get("layer_types")) == n_layers:
        layer_types = [str(t) for t in cfg.get("layer_types")]
        sliding = cfg.get("sliding_window")
    elif family in ("qwen2", "qwen3", "qwen3_moe"):
        # Qwen2Config: sliding only with use_sliding_window, on layers >= max_window_layers.
        if cfg.get("use_sliding_window"):
            sliding = cfg.get("sliding_window")
            mwl = int(cfg.get("max_window_layers") or 28)
            layer_types = ["sliding_attention" if sliding and i >= mwl else "full_attention" for i in range(n_layers)]
    elif family == "gemma2":
        sliding = cfg.get("sliding_window")
        layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    elif family == "gemma3_text":
        sliding = cfg.get("sliding_window")
        raw_pattern: Any = config.get("sliding_window_pattern")  # parsed JSON
        pattern = int(raw_pattern or 6)
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    else:  # llama has none; mistral/mixtral/phi3 apply `sliding_window` to every layer when set
        sliding = cfg.get("sliding_window") if family != "llama" else None
    if not layer_types:
        layer_types = ["sliding_attention" if sliding else "full_attention"] * n_layers
    if not any(t == "sliding_attention" for t in layer_types):
        sliding = None

    extra: list[tuple[str, object]] = []
    extra.extend(_rope_facts(config, family))
    if family == "phi3" and config.get("original_max_position_embeddings") is not None:
        extra.append(("original_max_position_embeddings", config.get("original_max_position_embeddings")))
    vision_params = 0
    vision_linears: tuple[LinearShape, ...] = ()
    if multimodal:
        vision_cfg = outer.get("vision_config") or {}
        if not isinstance(vision_cfg, Mapping):
            raise ValueError(f"{name}: config.json field vision_config must be an object")
        vision_params, vision_linears = _siglip_vision(vision_cfg, hidden)
        extra.append(("multimodal", True))
        extra.append(("note", "multimodal checkpoint: training text only; the vision tower is loaded and frozen"))
    if family == "gemma3_text" or family == "gemma2":
        extra.append(("query_pre_attn_scalar", cfg.get("query_pre_attn_scalar", head_dim)))
    if config.get("architectures"):
        extra.append(("architectures", tuple(config.get("architectures") or ())))  # type: ignore[arg-type]

    def _float_or_none(key: str) -> float | None:
        value = cfg.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return ModelSpec(
        name=name,
        model_type=str(model_type),
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=tie,
        max_position_embeddings=_context_length(cfg),
        torch_dtype=_dtype_of(config, outer),
        layers=tuple(layers),
        norm_params_per_layer=norm_per_layer,
        final_norm_params=hidden,
        num_experts=num_experts,
        experts_per_token=top_k,
        sliding_window=int(sliding) if sliding else None,
        attn_logit_softcapping=_float_or_none("attn_logit_softcapping") if family in ("gemma2", "gemma3_text") else None,
        final_logit_softcapping=_float_or_none("final_logit_softcapping") if family in ("gemma2", "gemma3_text") else None,
        extra=tuple(extra),
        moe_intermediate_size=moe_inter,
        qk_norm=qk_norm,
        norms_per_layer=norms,
        layer_types=tuple(layer_types),
        hidden_act=hidden_act,
        vision_params=vision_params,
        vision_linears=vision_linears,
    )
