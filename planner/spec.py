"""Model specs built from a Hugging Face `config.json` dict.

A `ModelSpec` holds what the memory and FLOP models need: the shapes of every linear
module a LoRA adapter can target, the embedding / lm_head / norm parameters, attention
geometry and MoE routing. Parameter counts are exact: `tests/planner/test_spec_exact.py`
checks them against `sum(p.numel())` of the transformers model built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UnsupportedArchitecture(ValueError):
    """The config's `model_type` is not one the planner models exactly."""


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

    def weight_params(self) -> int:
        """Weight (and bias) parameters of all instances in one layer."""
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a decoder-only LLM. All sizes are element counts."""

    name: str
    """Catalog name, Hub id or folder the spec came from."""
    model_type: str
    """`config.json` `model_type`, e.g. `llama`, `qwen3_moe`."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int
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

    def parameter_count(self) -> int:
        """Exactly `sum(p.numel() for p in model.parameters())` of the transformers model."""
        return self.embedding_params() + self.lm_head_params() + self.linear_params() + self.norm_params()
