"""Build the model our training step runs: steps 1-3 of the training-path contract.

The planner (`planner/memory.py`) predicts the memory of exactly this path, and
`docs/training-path.md` describes it for users. Any change here must be agreed there and in
`tuneplan/training/sft.py` (steps 4-5: trl `SFTTrainer`, mixed precision, optimizer, loss).

1. Load with `AutoModelForCausalLM.from_pretrained(src, dtype=<compute dtype>,
   attn_implementation=..., quantization_config=<QLoRA: BitsAndBytesConfig 4-bit, compute
   and storage dtype = compute dtype>)`. The attention implementation falls back, with the
   reason in the notes, when the requested one is unavailable (flash-attention without CUDA
   or without the `flash_attn` package, SDPA on a model that refuses it such as Gemma-2).
2. Lean k-bit preparation (ours, not `peft.prepare_model_for_kbit_training`): every base
   parameter is frozen and nothing is upcast; embeddings, `lm_head` and norms stay in the
   compute dtype. With checkpointing: non-reentrant activation checkpointing of every
   decoder layer plus `enable_input_require_grads()`. `use_cache` is off for training.
3. `get_peft_model(model, LoraConfig(r, lora_alpha, lora_dropout, target_modules,
   bias="none", task_type="CAUSAL_LM"))`; adapters are created in fp32 (peft's default
   `autocast_adapter_dtype=True`). Targets: `all-linear` (peft's, which on transformers-5 MoE
   models also adapts the fused experts and the router), `attention`, or names (see
   `lora_targets`). peft cannot apply dropout to MoE tensors (`lora.ParamWrapper`), so dropout
   is 0 whenever they are adapted, with a note. Method `full`: every parameter trainable, no
   peft. Long context (`tiled_mlp`): every decoder layer's MLP is then routed through the
   tiled MLP of `tuneplan/training/long_context.py`; (`chunked_norm`) its Llama-style RMSNorms
   through the chunked RMSNorm there; (`offload_embedding`, LoRA/QLoRA) the frozen, untied
   input embedding table moves to host RAM (`HostEmbedding` there).

Known library behaviour downstream of this module (documented in docs/training-path.md):
trl's `SFTTrainer` casts the trainable parameters of a 4-bit model to bf16 when it is
constructed (trl/trainer/sft_trainer.py, "QLoRA ... converted to bf16"), so QLoRA adapters
end up bf16 in a real run while LoRA adapters stay fp32.

`build_from_config` runs the same steps on a model built from a config (random weights),
for tests and for the memory trace (`verification/memory_trace.py`).
"""

from __future__ import annotations

import logging
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from planner.setup import ALL_LINEAR, TrainSetup
from tuneplan.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("tuneplan.training")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# TrainSetup.attn -> transformers `attn_implementation`
_ATTN = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}


def torch_dtype(name: str) -> torch.dtype:
    """`bfloat16` | `float16` | `float32` -> the torch dtype."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise UserError(f"compute_dtype must be one of {', '.join(_DTYPES)} (got {name!r})") from None


def _note(notes: list[str], text: str) -> None:
    log.info(text)
    notes.append(text)


def _model_class(config) -> type[PreTrainedModel] | None:
    """The transformers causal-LM class for a config, or None (e.g. remote code)."""
    from transformers import PreTrainedModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        # the lazy mapping's own annotation says a tuple; its value is the model class
        cls: object = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, PreTrainedModel) else None


def resolve_attention(config, requested: str, device_type: str, notes: list[str]) -> str:
    """The `attn_implementation` to load with: `requested` or the first usable fallback.

    Order: flash-attention-2 -> SDPA -> eager. Each fallback is noted with its reason.
    """
    from transformers.utils import is_flash_attn_2_available

    if requested not in _ATTN:
        raise UserError(f"attn must be one of {', '.join(_ATTN)} (got {requested!r})")
    cls = _model_class(config)
    name = getattr(cls, "__name__", config.model_type)
    choice = requested
    if choice == "flash":
        reason = None
        if device_type != "cuda":
            reason = "flash-attention needs a CUDA GPU"
        elif not is_flash_attn_2_available():
            reason = "the flash_attn package is not installed"
        elif cls is not None and not getattr(cls, "_supports_flash_attn", False):
            reason = f"{name} does not support flash-attention"
        if reason:
            _note(notes, f"attention: flash-attention unavailable ({reason}); using SDPA")
            choice = "sdpa"
    if choice == "sdpa" and cls is not None and not getattr(cls, "_supports_sdpa", False):
        why = " (attention logit soft-capping)" if getattr(config, "attn_logit_softcapping", None) else ""
        _note(notes, f"attention: {name} does not support SDPA{why}; using eager attention "
                     "(its scores grow with the square of the sequence length)")
        choice = "eager"
    return _ATTN[choice]


def bnb_config(setup: TrainSetup):
    """The QLoRA `BitsAndBytesConfig` of the contract (step 1)."""
    from transformers import BitsAndBytesConfig

    if setup.quant_type not in ("nf4", "fp4"):
        raise UserError(f"quant_type must be nf4 or fp4 (got {setup.quant_type!r})")
    dtype = torch_dtype(setup.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=setup.quant_type,
        bnb_4bit_use_double_quant=setup.double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_model(source: str | None, config, setup: TrainSetup, device: torch.device,
                trust_remote_code: bool, notes: list[str], revision: str | None = None, state_dict=None):
    """Step 1: `from_pretrained` in the compute dtype (or 4-bit for QLoRA).

    `state_dict` (with `source=None`): load these tensors instead of a checkpoint, through the
    same `from_pretrained` (dtype, device map, quantize on load); see `random_weights`."""
    from transformers import AutoModelForCausalLM

    if setup.method not in ("full", "lora", "qlora"):
        raise UserError(f"method must be full, lora or qlora (got {setup.method!r})")
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(setup.compute_dtype),
        "attn_implementation": resolve_attention(config, setup.attn, device.type, notes),
        "trust_remote_code": trust_remote_code,
        "device_map": {"": device},
    }
    if revision is not None:
        kwargs["revision"] = revision
    if setup.method == "qlora":
        kwargs["quantization_config"] = bnb_config(setup)
    try:
        if state_dict is not None:
            # transformers' `from_pretrained(None, state_dict=...)`; the Auto class would look
            # for remote code under the name None, so ask the model class itself
            cls = _model_class(config)
            if cls is None:
                raise UserError(f"random weights need a model class transformers knows ({config.model_type})")
            return cls.from_pretrained(None, config=config, state_dict=state_dict, **kwargs)
        assert source is not None, "a checkpoint load names its source (None only with state_dict)"
        return AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
    except (OSError, ValueError) as e:  # missing weights, gated repo, unsupported option
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load model weights from {source!r}: {first}") from e


def _peft_moe_aliases(model) -> set[str]:
    """transformers-4 module names peft rewrites onto fused MoE tensors for this model type
    (`peft/utils/transformers_weight_conversion.py` `_MOE_TARGET_MODULE_MAPPING`), e.g.
    mixtral `w1`/`w3`/`w2`/`gate`, qwen3_moe `gate_proj`/`up_proj`/`down_proj`/`gate`."""
    try:
        from peft.utils import transformers_weight_conversion as twc
    except ImportError:  # a peft without the v4->v5 conversion
        return set()
    base = twc._MODEL_TO_CONVERSION_PATTERN.get(str(getattr(model.config, "model_type", "")))
    return set(twc._MOE_TARGET_MODULE_MAPPING.get(base, {})) if base is not None else set()


def _attention_names(model) -> list[str]:
    """The attention projections of the decoder layers (planner spec names when it knows the
    model: `q_proj, k_proj, v_proj, o_proj`, phi3 `qkv_proj, o_proj`)."""
    try:
        from planner.spec import spec_from_config

        names = list(spec_from_config(model.config.to_dict(), "model").attention_module_names())
        if names:
            return names
    except (ValueError, KeyError, TypeError):
        pass
    found = []
    for name, mod in model.named_modules():
        if ".layers." in name and ".self_attn." in name and isinstance(mod, torch.nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in found:
                found.append(leaf)
    return found


def lora_targets(model, setup: TrainSetup) -> tuple[list[str] | str, list[str]]:
    """(target_modules, target_parameters) for peft from `setup.lora_targets`.

    `all-linear` passes through (peft resolves it, MoE experts and router included);
    `attention` becomes the attention projections. Names go to `target_modules` as given when
    they name a linear module or a transformers-4 MoE name peft rewrites itself (mixtral
    `w1`/`w2`/`w3`/`gate`, qwen3_moe `gate_proj`/`up_proj`/`down_proj`/`gate`); fused expert
    tensors named directly (`gate_up_proj`, `experts.down_proj`) go to `target_parameters`
    (see planner/spec.py). An unknown name raises a UserError naming the real ones.
    """
    targets = setup.lora_targets
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return ALL_LINEAR, []
        if targets == "attention":
            return _attention_names(model), []
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    targets = tuple(t for t in targets if t)
    if not targets:
        raise UserError("lora_targets is empty: give `all-linear`, `attention` or module names such as q_proj,v_proj")
    if targets == ("attention",):
        return _attention_names(model), []
    linear_paths = [name for name, mod in model.named_modules()
                    if (isinstance(mod, torch.nn.Linear) or type(mod).__name__.startswith("Linear"))
                    and not name.endswith("lm_head")]
    fused = [n for n, p in model.named_parameters() if p.dim() == 3]  # transformers-5 MoE experts
    aliases = _peft_moe_aliases(model)

    def suffix(paths, t):
        return any(p == t or p.endswith("." + t) for p in paths)

    modules, params, unknown = [], [], []
    for t in targets:
        if suffix(linear_paths, t) or t in aliases:
            modules.append(t)
        elif suffix(fused, t):
            params.append(t)
        else:
            unknown.append(t)
    if unknown:
        real = sorted({p.rsplit(".", 1)[-1] for p in linear_paths} | aliases
                      | {".".join(n.rsplit(".", 2)[-2:]) for n in fused})
        raise UserError(f"unknown LoRA target module(s) {', '.join(unknown)}; this model has: {', '.join(real)}")
    return modules, params


def prepare_for_training(model, setup: TrainSetup, notes: list[str]):
    """Steps 2-3 on a loaded model: freeze, checkpointing, LoRA (or all-trainable for `full`),
    then the tiled MLP when `setup.tiled_mlp`, the chunked RMSNorm when `setup.chunked_norm` and
    the host-resident input embedding when `setup.offload_embedding` (training/long_context.py)."""
    from tuneplan.training import long_context

    implied = long_context.effective_setup(setup)
    if implied is not setup:
        _note(notes, "gradient checkpointing on: activation offloading keeps the checkpointed layer inputs "
                     "in host RAM, so it implies checkpointing")
        setup = implied
    model = _prepare(model, setup, notes)
    if getattr(setup, "tiled_mlp", False):
        n = long_context.apply_tiled_mlp(model)
        _note(notes, f"tiled MLP: {n} decoder-layer MLPs run shard by shard along the sequence "
                     f"(ceil(tokens / hidden_size) shards), recomputed in backward")
    if getattr(setup, "chunked_norm", False):
        n = long_context.apply_chunked_norm(model)
        _note(notes, f"chunked RMSNorm: {n} norms keep their input and one fp32 value per token, computed "
                     f"in chunks of ceil(tokens / ceil(tokens / hidden_size)) tokens"
                     + ("" if n else " (none here: this model's norm is not Llama's RMSNorm)"))
    if getattr(setup, "offload_embedding", False):
        # one GPU, as the planner counts it (planner.memory.embedding_offload_applies)
        moved = long_context.apply_host_embedding(model) if setup.num_gpus == 1 else 0
        if setup.num_gpus != 1:
            _note(notes, f"embedding offload not applied: it is for one GPU (this run has {setup.num_gpus})")
        elif moved:
            from tuneplan.formatting import size

            _note(notes, f"embedding offload: the input embedding table ({size(moved)}) stays in host RAM; "
                         "each batch's tokens are looked up there and only their rows are copied to the device")
        else:
            _note(notes, "embedding offload not applied: " + (long_context.host_embedding_refusal(model) or "?"))
    return model


def _prepare(model, setup: TrainSetup, notes: list[str]):
    model.config.use_cache = False
    if setup.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if setup.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        _note(notes, "full fine-tuning: every parameter trainable, no adapters")
        return model

    # Step 2: lean k-bit preparation. Freeze everything, upcast nothing.
    for p in model.parameters():
        p.requires_grad_(False)
    if setup.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    # Step 3: LoRA adapters (fp32: peft's autocast_adapter_dtype=True default).
    from peft import LoraConfig, get_peft_model

    if setup.lora_rank <= 0:
        raise UserError(f"lora_rank must be > 0 (got {setup.lora_rank})")
    modules, params = lora_targets(model, setup)
    dropout = setup.lora_dropout
    fused_experts = any(p.dim() == 3 for p in model.parameters())
    rewritten = modules == ALL_LINEAR or any(m in _peft_moe_aliases(model) for m in modules)
    if dropout and (params or (fused_experts and rewritten)):
        # peft maps all-linear on transformers-5 MoE models (peft/utils/
        # transformers_weight_conversion.py `_convert_peft_config_moe`) to the fused expert
        # weights and the router as `target_parameters`; their `lora.ParamWrapper` raises
        # "does not work with lora_dropout != 0" (peft/tuners/lora/layer.py).
        dropout = 0.0
        _note(notes, f"LoRA dropout set to 0 (was {setup.lora_dropout}): peft cannot apply dropout to the "
                     "fused MoE expert weights it adapts")
    cfg = LoraConfig(
        r=setup.lora_rank,
        lora_alpha=setup.lora_alpha,
        lora_dropout=dropout,
        target_modules=modules,
        target_parameters=params or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype = "fp32; trl's SFTTrainer casts them to bf16 for a 4-bit model" if setup.method == "qlora" else "fp32"
    _note(notes, f"LoRA r={setup.lora_rank} alpha={setup.lora_alpha} on "
                 f"{modules if isinstance(modules, str) else ','.join(modules + params)}: "
                 f"{trainable:,} trainable parameters ({dtype})")
    return model


def load_for_training(source: str, setup: TrainSetup, *, trust_remote_code: bool = False,
                      device: str | torch.device | None = None, revision: str | None = None):
    """Load `source` (local folder, Hub id or catalog name) ready for the trainer: steps 1-3.

    Returns `(model, tokenizer, notes)`; `notes` are sentences for the run log (attention
    fallback, adapter summary). `revision`: a Hub branch, tag or commit (None: the default). The tokenizer is returned as loaded (no pad token is added).
    Bad input (missing folder, unknown target, ...) raises `UserError`.
    """
    from transformers import AutoConfig, AutoTokenizer

    from tuneplan.services.models import resolve_source

    notes: list[str] = []
    given, source = str(source), resolve_source(str(source))  # the planner's resolver, without its spec
    from planner import catalog

    if catalog.find(given) is not None and source != given:
        _note(notes, f"model {given!r}: catalog entry, loading {source}")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load the model config/tokenizer from {source!r}: {first}") from e
    dev = _default_device(device)
    model = _load_model(source, config, setup, dev, trust_remote_code, notes, revision=revision)
    model = prepare_for_training(model, setup, notes)
    return model, tokenizer, notes


def config_from_dict(config: dict | Any):
    """A transformers config object from a `config.json` dict (or pass one through)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    d = dict(config)
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


def build_from_config(config: dict | Any, setup: TrainSetup, *, device: str | torch.device = "cpu",
                      seed: int = 0):
    """A model with random weights from a config, through the same steps as a real load.

    LoRA/full: built in the compute dtype directly on `device`. QLoRA: the random 16-bit
    model is saved to a temporary folder and loaded back through `from_pretrained` with the
    contract's `BitsAndBytesConfig`, so quantization is bitsandbytes' own. Returns
    `(model, notes)`. For the meta device see `verification.memory_trace` (4-bit on meta needs
    a stand-in).
    """
    from transformers import AutoModelForCausalLM

    cfg = config_from_dict(config)
    dev = torch.device(device)
    notes: list[str] = []
    attn = resolve_attention(cfg, setup.attn, dev.type, notes)
    dtype = torch_dtype(setup.compute_dtype)
    torch.manual_seed(seed)
    if setup.method == "qlora":
        with torch.device("cpu"):
            m16 = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
        with tempfile.TemporaryDirectory(prefix="tuneplan-model-") as tmp:
            m16.save_pretrained(tmp)
            del m16
            model = _load_model(tmp, cfg, setup, dev, False, [])
    else:
        with dev:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    model = prepare_for_training(model, setup, notes)
    return model, notes
