"""The inputs and outputs of the memory model: one training setup and its estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw-32bit")
ATTENTIONS = ("sdpa", "flash", "eager")
DTYPES = ("bfloat16", "float16", "float32")
STRATEGIES = ("single", "ddp", "fsdp")

# Named groups of LoRA targets. Names are transformers module attribute names.
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class TrainSetup:
    """Every knob of one training step that changes its memory or speed."""

    method: str = "lora"
    """`full`, `lora` or `qlora` (4-bit frozen base)."""
    quant_type: str = "nf4"
    """QLoRA 4-bit format: `nf4` or `fp4`."""
    double_quant: bool = True
    """QLoRA: quantize the per-block absmax constants too (bitsandbytes double quantization)."""
    compute_dtype: str = "bfloat16"
    """dtype of the frozen 16-bit weights and of autocast (`float16` on cards without bf16)."""
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | str = ALL_LINEAR
    """`all-linear`, or module names such as ("q_proj", "v_proj")."""
    micro_batch: int = 1
    """Sequences per forward/backward on one GPU."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (changes speed, not memory)."""
    seq_len: int = 2048
    """Tokens per sequence (packed rows are exactly this long; padded rows at most this)."""
    packing: bool = True
    grad_checkpointing: bool = True
    """Non-reentrant activation checkpointing of every decoder layer."""
    optimizer: str = "adamw"
    attn: str = "sdpa"
    fused_ce: bool = False
    """Fused linear cross-entropy (Liger): the full logits are never materialised."""
    num_gpus: int = 1
    strategy: str = "single"
    """`single`, `ddp` or `fsdp` (planner/parallel.py, tuneplan/training/distributed.py)."""
    cpu_offload: bool = False
    """FSDP only: sharded weights, gradients and optimizer states live in host memory
    (`fsdp_offload_params`; planner/parallel.py, tuneplan/training/distributed.py)."""
    offload_activations: bool = False
    """Long context: the checkpointed decoder-layer inputs are kept in pinned host RAM between
    forward and backward (torch `saved_tensors_hooks`, trl/torchtune activation offloading), so
    the card holds one layer's recomputation at a time. Implies `grad_checkpointing`
    (planner/memory.py `offload_*`, docs/long-context.md)."""
    tiled_mlp: bool = False
    """Long context: each decoder layer's MLP runs shard by shard along the sequence and is
    recomputed in backward (Arctic Long Sequence Training / `liger_kernel.ops.tiled_mlp`), so its
    intermediates exist for one shard only (planner/memory.py, docs/long-context.md)."""
    chunked_norm: bool = False
    """Long context: the decoder's Llama-style RMSNorms save only their input and one fp32 value
    per position and compute in fp32 one chunk of positions at a time (tuneplan/training/
    long_context.py `ChunkedRMSNorm`; planner/memory.py `norm_chunk_tokens`) instead of keeping
    an fp32 copy and four fp32 tokens x hidden tensors in their backward."""

    offload_embedding: bool = False
    """Long context: the frozen input embedding table stays in host RAM; each micro-batch's
    token ids are looked up there and only the looked-up rows (micro-batch x seq x hidden)
    are copied to the card (tuneplan/training/long_context.py `HostEmbedding`). Applies to
    LoRA/QLoRA with an untied embedding on one GPU (planner/memory.py
    `embedding_offload_applies`); a tied table is the lm_head too and must stay on the card.
    The technique of Unsloth's `offload_embedding`."""

    def effective_batch(self) -> int:
        """Sequences per optimizer step across all GPUs."""
        return self.micro_batch * self.grad_accum * self.num_gpus

    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class CalibrationProfile:
    """How a training stack other than tuneplan's own computes the same step.

    The memory model is calibrated against published measurements of other stacks (litgpt,
    Lightning Fabric, older bitsandbytes, ...); these fields describe where such a stack
    differs. Users never set them: the defaults are tuneplan's own path (`TUNEPLAN_STACK`),
    and only the calibration cases (tests/data/calibration/cases.json "stacks") change them.
    """

    weight_dtype: str | None = None
    """dtype the (frozen) base weights are kept in; None = `compute_dtype` (our path).
    `float32` with autocast is Lightning's "bf16-mixed"."""
    adapter_dtype: str | None = None
    """dtype of the trainable LoRA weights; None = our path: fp32 for LoRA (peft default),
    bf16 for QLoRA (trl's SFTTrainer casts a 4-bit model's adapters to bf16)."""
    autocast: bool = True
    """Mixed precision through autocast (accelerate `bf16`/`fp16`); False = pure 16-bit
    ("bf16-true") or fp32 steps."""
    loss_upcast: bool = True
    """The loss runs on fp32 logits: transformers' `logits.float()`, or (litgpt) Lightning
    Fabric's `convert_output`, which casts every floating-point output of the module (the
    logits chunks) to the default dtype fp32; False = the loss runs on 16-bit logits."""
    optimizer_state_dtype: str | None = None
    """dtype of torch AdamW states; None = the parameter dtype (`zeros_like(param)`)."""
    lora_qkv_fused: bool = False
    """The stack adapts q/k/v through one fused projection with one shared adapter input
    (litgpt `LoRAQKVLinear`); peft wraps each projection separately. When only some of q/k/v
    are adapted, litgpt's `zero_pad` scatters the adapter output with `index_copy`, whose
    autograd node saves its source (the adapted part of the q/k/v output)."""
    quantize_lm_head: bool = False
    """QLoRA also quantizes the lm_head (Lightning `BitsandbytesPrecision` converts every
    nn.Linear); transformers' bitsandbytes quantizer keeps it 16-bit."""
    repeat_kv: bool = False
    """The stack expands grouped-query k/v to every query head before attention (litgpt
    `repeat_interleave` in training); transformers' SDPA path uses native GQA when it can."""
    bnb_saves_input: bool = False
    """Older bitsandbytes (`MatMul4Bit.forward`: `ctx.tensors = (A, B)`, before the 0.43.3
    fix): each 4-bit linear keeps its input for the backward although no weight gradient is
    computed; bitsandbytes 0.50 keeps only the weight."""
    untie_embeddings: bool = False
    """The stack keeps a separate lm_head even when the config ties it to the embeddings
    (litgpt: `convert_hf_checkpoint` copies `transformer.wte.weight` into `lm_head.weight`
    and its GPT never ties them while fine-tuning); our path keeps transformers' tying."""
    fused_qkv: bool = False
    """The stack computes q, k, v with one fused projection and slices them out of its output
    (litgpt `CausalSelfAttention`): with as many KV heads as query heads, `v` stays a view of
    that output, so the attention kernel saving `v` keeps the whole q/k/v output alive."""
    bnb_dequant_fp16: bool = False
    """The 4-bit weights were quantized from an fp16 copy (Lightning `_Linear4bit.quantize`:
    `weight.to(torch.half)`), so their quant state dequantizes to fp16 and `MatMul4Bit` casts
    that to the compute dtype: two weight-sized transients per dequantization. Our path
    quantizes from the compute dtype (one transient)."""
    loss_impl: str | None = None
    """How the loss is computed; None = our path (`fused_ce` -> trl's chunked LM head, else
    transformers' loss). Others: `transformers`, `trl`, `liger`, `chunked` (litgpt: 16-bit
    logit chunks, per-chunk cross-entropy)."""


TUNEPLAN_STACK = CalibrationProfile()
"""tuneplan's own training path (tuneplan/training/, docs/training-path.md)."""


# Component names, in display order. Every MemoryEstimate has all of them (0 when absent).
COMPONENTS = (
    "runtime_overhead",      # CUDA context + cuBLAS workspace (not in torch's counters)
    "quantized_weights",     # 4-bit weights + quantization constants
    "unquantized_weights",   # 16/32-bit frozen weights: embeddings, lm_head, norms, routers, ...
    "adapter_weights",       # trainable LoRA A/B (or all weights for full fine-tuning)
    "gradients",             # gradients of the trainable parameters
    "optimizer_states",      # AdamW moments (fp32 or 8-bit), on the GPU
    "saved_activations",     # tensors autograd keeps from forward to backward
    "transient_peak",        # the largest short-lived working set: logits/loss, dequant, recompute
    "allocator_overhead",    # caching allocator reserve and fragmentation (reserved - allocated)
)
TENSOR_COMPONENTS = COMPONENTS[1:8]


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of the second optimizer step on one GPU, in bytes."""

    components: dict[str, int]
    """Component name (see COMPONENTS) -> bytes."""
    torch_peak_bytes: int
    """What `torch.cuda.max_memory_allocated()` reads after the second optimizer step."""
    device_bytes: int
    """What nvidia-smi shows for the process: reserved memory plus CUDA context."""
    details: dict[str, int] = field(default_factory=dict)
    """Finer named items (e.g. `logits_fp32`, `embed_tokens`) for explanations, in bytes."""
    notes: tuple[str, ...] = ()
    """Sentences that explain notable items (e.g. 'eager attention: scores grow with seq^2')."""

    def host_bytes(self) -> int:
        """Host RAM the long-context path needs beside the card at its peak, in bytes; 0 without it.

        The offloaded activations' pinned buffers (`details["host_activation_bytes"]`) and the
        host-resident embedding (`details["host_embedding_bytes"]`: its table,
        `details["embed_tokens_host"]`, plus one lookup's token ids and rows). The lookup runs
        first in the forward and its ids and rows are freed before the first layer input is
        offloaded, so the peak is the table plus the larger of the two (the CUDA-semantics trace)."""
        act = int(self.details.get("host_activation_bytes", 0))
        emb = int(self.details.get("host_embedding_bytes", 0))
        table = int(self.details.get("embed_tokens_host", 0))
        return table + max(act, emb - table) if emb else act
