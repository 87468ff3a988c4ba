"""GPU memory of one LoRA / QLoRA / full fine-tuning step, modelled from the mechanisms.

`estimate_memory(spec, setup, gpu)` predicts the second optimizer step of tuneplan's own
training path (see `docs/training-path.md` and the contract in `planner/setup.py`):

1. frozen base in the compute dtype (LoRA, full) or bitsandbytes 4-bit (QLoRA: NF4/FP4,
   blocksize 64, optional double quantization, quant_storage = compute dtype); embeddings,
   lm_head and norms stay in the compute dtype (no kbit-preparation upcast);
2. peft LoRA adapters in fp32 (peft `autocast_adapter_dtype=True`); trl's SFTTrainer casts
   the adapters of a 4-bit model to bf16 (trl/trainer/sft_trainer.py, "QLoRA ... bf16");
3. accelerate bf16/fp16 autocast, non-reentrant checkpointing of every decoder layer;
4. the loss: transformers' `ForCausalLMLoss` (`logits.float()` + cross-entropy, plus
   accelerate's `convert_outputs_to_fp32` copy) or a fused/chunked linear cross-entropy;
5. the optimizer after its first step (states exist): torch AdamW (states in the parameter
   dtype, foreach temporaries), bitsandbytes 8-bit (uint8 + fp32 absmax per 256 elements,
   tensors under 4096 elements in 32-bit) and paged variants (buffers of tensors with at
   least 1e5 elements in CUDA unified memory, outside torch's caching allocator).

The step is modelled in phases (end of forward / loss forward / start of the loss backward /
backward through a layer / optimizer step); `torch_peak_bytes` is the largest phase, not the
sum of everything. Each formula names the library file and function it follows.

Paged optimizer buffers: `torch.cuda.max_memory_allocated()` never sees them (they come from
`cudaMallocManaged` in bitsandbytes `functional.get_paged`), so they are left out of
`torch_peak_bytes`; while the GPU has room they stay resident and nvidia-smi counts them, so
they are in `device_bytes` (component `optimizer_states` holds both; `details` splits them).

Other training stacks (used to calibrate against published measurements) are described by a
`planner.setup.CalibrationProfile` passed as `profile=` (weight and adapter dtypes, autocast,
the loss, litgpt's fused q/k/v, older bitsandbytes, ...); the default, `TUNEPLAN_STACK`, is
our path. The litgpt mechanisms behind them were read in litgpt's code (model.py, lora.py,
utils.py, scripts/convert_hf_checkpoint.py), Lightning Fabric's precision plugins and
bitsandbytes' `MatMul4Bit`; each formula names its file.

What the numbers are checked against:
- the live tensor bytes of real CPU training steps of our own trainer, every supported
  family (verification/memory_trace.py, tests/planner/test_trace_cpu.py, tests/data/traces/;
  `device="cpu"` switches the two CPU-only kernels), and the same step on fake tensors at
  8B/70B (bench/bench_trace_meta.py);
- the CUDA-semantics trace of the same step (verification/cuda_semantics.py: CUDA SDPA
  kernels, autocast, dropout, foreach AdamW, bitsandbytes' gemm_4bit, cuBLAS workspaces) on
  a grid of full-size models (bench/bench_trace_cuda.py, tests/data/traces/cuda_grid.csv,
  tests/planner/test_margins.py, tests/planner/test_trace_cuda.py);
- published GPU measurements (verification/memory_calibration.py,
  tests/planner/test_calibration.py, tests/data/calibration/cases.json,
  bench/bench_memory_calibration.py), which also calibrate what a CPU cannot show: CUDA
  context, cuBLAS workspace, allocator fragmentation.

Pure arithmetic (stdlib only), well under 1 ms per estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from planner.setup import COMPONENTS, TENSOR_COMPONENTS, TUNEPLAN_STACK, CalibrationProfile, MemoryEstimate, TrainSetup
from planner.spec import resolve_lora_targets

MiB = 1024**2
GiB = 1024**3

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# bitsandbytes 4-bit layout (bitsandbytes/functional.py `quantize_4bit`, nn/modules.py
# `Params4bit`): blocksize 64, one absmax per block; with double quantization the absmax are
# themselves quantized by `quantize_blockwise(..., blocksize=256)` to uint8 + fp32 absmax.
BNB_4BIT_BLOCK = 64
BNB_DQ_BLOCK = 256
BNB_4BIT_CODE_BYTES = 16 * 4  # `get_4bit_type` -> 16 fp32 values per quantized tensor
BNB_DQ_CODE_BYTES = 256 * 4  # `create_dynamic_map` -> 256 fp32 values (cached once per device)
# bitsandbytes/backends/cuda/ops.py: `_gemm_4bit_custom_max_m`: above this many rows the 4-bit
# matmul dequantizes the whole weight (`_dequant_linear_fallback`) and calls F.linear.
BNB_FUSED_MAX_TOKENS = 1536

# bitsandbytes/optim/optimizer.py `Optimizer2State.init_state` / `get_state_buffer`.
BNB_OPT_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096
BNB_PAGED_MIN_NUMEL = 100_000

# trl/kernels/chunked_logprob.py (`TOKEN_CHUNK_SIZE`) and trl/trainer/utils.py
# (`_CHUNKED_LOGPROB_CHUNK_SIZE`): the tile of the chunked log-prob LM head.
TRL_TOKEN_CHUNK = 4096
TRL_VOCAB_CHUNK = 32768

# trl/models/activation_offloading.py `OffloadActivations` (from torchtune), as
# `get_act_offloading_ctx_manager` builds it: every tensor autograd saves outside a checkpointed
# region (with non-reentrant checkpointing: each decoder layer's input, which torch/utils/checkpoint.py
# `_CheckpointFrame.save_inputs` saves as a SavedVariable under the outer hooks; what a layer
# saves inside goes to the checkpoint's own hook) that is on the GPU, not a parameter and at least
# `min_offload_size` bytes is copied to pinned CPU memory on a side stream; the GPU tensor stays in
# `fwd_stash` until `max_fwd_stash_size` later packs. A tensor whose storage is still in the stash
# is not copied again but kept on the GPU (the storage de-duplication), and in the backward an
# unpacked tensor lives until the next autograd node that unpacks one runs its hook.
OFFLOAD_MIN_BYTES = 1024
OFFLOAD_FWD_STASH = 5
OFFLOAD_BWD_LIVE = 2
"""Unpacked layer inputs on the GPU during the backward: the layer being recomputed and the one
before it, released by the next node's hook (`bwd_tensor_stash`)."""


def pinned_bytes(n: int) -> int:
    """Host bytes torch's pinned-memory allocator takes for a tensor of n bytes: the caching host
    allocator rounds every request up to a power of two (aten/src/ATen/core/CachingHostAllocator.h
    `allocate`: `c10::llvm::PowerOf2Ceil(size)` while size <= `pinned_max_round_threshold`, which
    is unlimited by default, c10/core/AllocatorConfig.h)."""
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def tiled_mlp_shards(setup: TrainSetup, hidden: int) -> tuple[int, int]:
    """(shards, tokens per shard) of the tiled MLP over one micro-batch.

    tuneplan/training/long_context.py `TiledMLP` (the rule of Arctic Long Sequence Training,
    DeepSpeed `TiledMLP` and `liger_kernel.ops.tiled_mlp`): the MLP input is split along its
    sequence dimension into ceil(positions / hidden_size) shards of ceil(positions / shards)
    positions. Padding-free packing flattens the micro-batch into one row of b x s positions
    (SDPA/flash); unpacked rows and eager attention's wrapped rows keep b rows of s, so a shard
    then holds b x ceil(s / shards) tokens."""
    b, s = setup.micro_batch, setup.seq_len
    flat = setup.packing and setup.attn != "eager"
    positions = b * s if flat else s
    shards = max(1, -(-positions // max(1, hidden)))
    step = -(-positions // shards)
    return shards, step * (1 if flat else b)


def embedding_offload_applies(spec, setup: TrainSetup) -> bool:
    """Whether `setup.offload_embedding` moves `spec`'s input embedding table off the card: LoRA or
    QLoRA (the table is frozen; a full fine-tune trains it), an untied table (a tied one is also
    the lm_head the loss multiplies by on the card) and one GPU (the long-context path). The rule
    tuneplan/training/long_context.py `apply_host_embedding` follows (it also needs the table to
    be a plain `nn.Embedding`, which every `spec` family in the catalog with an untied table has)."""
    return (bool(getattr(setup, "offload_embedding", False)) and setup.method != "full"
            and not spec.tie_word_embeddings and setup.num_gpus == 1)


LLAMA_RMSNORM_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "phi3", "qwen2", "qwen3", "qwen3_moe"})
"""`model_type`s whose norms run transformers' `LlamaRMSNorm.forward` (the same bytecode, checked
at patch time by tuneplan/training/long_context.py `is_llama_rmsnorm`): the ones the chunked
RMSNorm replaces. Gemma's `(1 + weight)` norms are left alone."""


def norm_chunk_tokens(positions: int, hidden: int) -> int:
    """Positions per chunk of the chunked RMSNorm over `positions` rows of `hidden` values
    (tuneplan/training/long_context.py `ChunkedRMSNorm`, forward and backward): the tiled MLP's
    shard rule, ceil(positions / ceil(positions / hidden)), so one chunk's fp32 temporaries are
    about hidden^2 x 4 bytes (64 MiB at hidden 4096), whatever the sequence."""
    shards = max(1, -(-positions // max(1, hidden)))
    return max(1, -(-positions // shards))


def chunked_norm_applies(spec, setup: TrainSetup) -> bool:
    """Whether `setup.chunked_norm` changes `spec`'s norms (LLAMA_RMSNORM_MODEL_TYPES)."""
    return bool(getattr(setup, "chunked_norm", False)) and spec.model_type in LLAMA_RMSNORM_MODEL_TYPES


# CUDA context of a process that initialised torch + cuBLAS: with lazy module loading (CUDA
# >= 11.7, the torch default) a few hundred MiB, growing with the architecture's kernel
# images; older stacks loaded every kernel up front (> 1 GiB: transformers docs
# model_memory_anatomy.md read 1343 MiB on a V100, row M168). No single-GPU nvidia-smi row of
# the published data states its context, so these are typical values, not a fit.
CUDA_CONTEXT_BYTES = {
    "turing": 420 * MiB,
    "ampere": 480 * MiB,
    "ada": 480 * MiB,
    "hopper": 560 * MiB,
    "blackwell": 600 * MiB,
    None: 500 * MiB,
}
# torch aten/src/ATen/cuda/CublasHandlePool.cpp `parseChosenWorkspaceSize`: default
# CUBLAS_WORKSPACE_CONFIG ":4096:2:16:8" (8 MiB + 128 KiB), ":4096:8" (32 MiB) on sm90 only
# (`major == 9 && minor == 0`). The workspace comes from the caching allocator
# (`getNewWorkspace`), so `max_memory_allocated` counts it: one per thread that runs GEMMs
# (`setWorkspaceForHandle` keys it by handle and stream; handles are per thread), i.e. the
# Python thread (forward) and the autograd engine's CUDA device thread (backward).
CUBLAS_WORKSPACE_BYTES = {"hopper": 32 * MiB, None: 8 * MiB + 128 * 1024}
# `parseCUDABlasLtWorkspaceSize`: 1024 KiB; `getCUDABlasLtWorkspace` allocates it (per handle
# and stream) for GEMMs with a bias epilogue (`addmm`), i.e. linear layers with a bias.
CUBLASLT_WORKSPACE_BYTES = 1 * MiB
CUBLAS_THREADS = 2

# Caching allocator (c10/cuda/CUDACachingAllocator.cpp): requests round up to 512 bytes;
# requests over 10 MiB get their own segment rounded up to 2 MiB; freed blocks stay reserved.
# Transients of different shapes (activations, logits, dequantized weights) leave cached
# blocks that later requests of other sizes cannot reuse, so reserved exceeds the allocated
# peak by a fraction of the churning (non-persistent) memory. A CPU cannot show this: the
# fraction is calibrated on the published reserved figures of a stack like ours (the PEFT
# method-comparison rows: transformers + peft, no checkpointing) and is consistent with the
# published reserved/allocated pairs (fsdp_qlora 10.24/8.28 GiB, llama-recipes 32.67/25.86 GB,
# a Llama-3-8B QLoRA recipe 16.4 vs 10.8 GiB with expandable segments); see
# tests/data/calibration/cases.json.
ALLOC_ROUND = 512
ALLOC_FRAGMENTATION = 0.30


def _round_alloc(n: int) -> int:
    return ((n + ALLOC_ROUND - 1) // ALLOC_ROUND) * ALLOC_ROUND


def _bytes(dtype: str) -> int:
    try:
        return _DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPE_BYTES)} (got {dtype!r})") from None


# -- resolving the setup into the dtypes of our path ------------------------------------------
@dataclass(frozen=True)
class _Path:
    w: int  # bytes per frozen 16/32-bit weight element
    act: int  # bytes per activation element (the autocast dtype, or the weight dtype)
    adapter: int  # bytes per trainable element (LoRA A/B, or all params for full)
    lora_linear: int  # bytes of the input LoRA's A-linear computes in (and saves)
    lora_cast: bool  # peft `_cast_input_dtype` makes a copy of each adapted input
    opt_state: int  # bytes per AdamW state element (torch: param dtype; bnb 32-bit: fp32)
    profile: CalibrationProfile  # the training stack (TUNEPLAN_STACK: ours)


def _resolve(setup: TrainSetup, profile: CalibrationProfile) -> _Path:
    compute = _bytes(setup.compute_dtype)
    w = _bytes(profile.weight_dtype or setup.compute_dtype)
    autocast = profile.autocast and compute < 4
    act = compute if autocast else w
    if setup.method == "full":
        adapter = w
    else:
        dt = profile.adapter_dtype
        if dt is None:
            # peft default fp32 adapters; trl SFTTrainer casts a 4-bit model's adapters to bf16
            dt = "bfloat16" if setup.method == "qlora" else "float32"
        adapter = _bytes(dt)
    # peft/tuners/lora/layer.py `Linear.forward` -> `_cast_input_dtype(x, lora_A.weight.dtype)`
    lora_cast = setup.method != "full" and adapter != act
    # under autocast F.linear runs in the autocast dtype; without it, in the adapter dtype
    lora_linear = act if autocast else adapter
    if setup.optimizer in ("paged-adamw-32bit",):
        opt_state = 4  # bnb 32-bit optimizers keep fp32 states whatever the param dtype
    else:
        sd = profile.optimizer_state_dtype
        opt_state = _bytes(sd) if sd else adapter  # torch.optim.AdamW: zeros_like(param)
    return _Path(w=w, act=act, adapter=adapter, lora_linear=lora_linear, lora_cast=lora_cast, opt_state=opt_state,
                 profile=profile)


def _lora_modules(spec, setup: TrainSetup):
    """Per layer, the LinearShapes peft wraps (spec.resolve_lora_targets when available)."""
    if setup.method == "full":
        return tuple(() for _ in spec.layers)
    return resolve_lora_targets(spec, _body_targets(setup))


def _head_adapted(setup: TrainSetup) -> bool:
    """LoRA on the lm_head (litgpt's `lora_head`; peft's all-linear never adapts it)."""
    t = setup.lora_targets
    return setup.method != "full" and not isinstance(t, str) and "lm_head" in t


def _body_targets(setup: TrainSetup):
    t = setup.lora_targets
    if isinstance(t, str):
        return t
    return tuple(x for x in t if x != "lm_head")


# -- weights ----------------------------------------------------------------------------------
def _head_params(spec, setup: TrainSetup, p: _Path) -> int:
    """Elements of a separate lm_head weight (0 when it is tied to the embeddings).

    litgpt `scripts/convert_hf_checkpoint.py` (`copy_weights_hf_llama`, `copy_weights_gemma_2`):
    `if "lm_head.weight" not in state_dict: state_dict["lm_head.weight"] =
    state_dict["transformer.wte.weight"]`, and its GPT keeps `lm_head` and `wte` as two
    parameters while fine-tuning: a tied checkpoint becomes two copies (`untie_embeddings`)."""
    if spec.tie_word_embeddings and p.profile.untie_embeddings:
        return spec.vocab_size * spec.hidden_size
    return spec.lm_head_params()


def _quantized_tensor_bytes(n: int, setup: TrainSetup, storage_bytes: int) -> tuple[int, int]:
    """(packed weight bytes, quantization-constant bytes) of one 4-bit tensor of n elements.

    bitsandbytes/functional.py `quantize_4bit`: packed `(n + 1) // (2 * itemsize)` elements
    of quant_storage; absmax fp32 per 64-block, or (double quant) uint8 per block + fp32
    absmax per 256 of those + the 256-entry fp32 code + an fp32 offset; the 16-value code.
    """
    per = 2 * storage_bytes
    packed = ((n + per - 1) // per) * storage_bytes
    blocks = -(-n // BNB_4BIT_BLOCK)
    if setup.double_quant:
        consts = blocks + 4 * -(-blocks // BNB_DQ_BLOCK) + 4 + BNB_4BIT_CODE_BYTES
    else:
        consts = 4 * blocks + BNB_4BIT_CODE_BYTES
    return packed, consts


def _weights(spec, setup: TrainSetup, p: _Path, details: dict) -> tuple[int, int]:
    """(quantized bytes, unquantized bytes) of the frozen or trainable base weights."""
    embed = spec.embedding_params() * p.w
    if embedding_offload_applies(spec, setup):
        # tuneplan/training/long_context.py `HostEmbedding`: the table lives in host RAM
        details["embed_tokens_host"] = embed
        embed = 0
    head_params = _head_params(spec, setup, p)
    head = head_params * p.w
    if setup.method == "qlora" and p.profile.quantize_lm_head and head:
        # Lightning `BitsandbytesPrecision` (litgpt) converts every nn.Linear, the head too
        packed, consts = _quantized_tensor_bytes(head_params, setup, p.w)
        details["lm_head_4bit"] = packed + consts
        head = 0
    norms = spec.norm_params() * p.w
    details["embed_tokens"] = embed
    if head:
        details["lm_head"] = head
    details["norms"] = norms
    packed_total = consts_total = other = 0
    memo: dict[int, tuple[int, int, int]] = {}
    for layer in spec.layers:
        k = id(layer)
        if k not in memo:
            pk = cs = ot = 0
            for m in layer:
                if setup.method == "qlora" and m.quantizable():
                    packed, consts = _quantized_tensor_bytes(m.in_features * m.out_features, setup, p.w)
                    pk += packed * m.count
                    cs += consts * m.count
                    if m.bias:
                        ot += m.out_features * m.count * p.w  # Linear4bit keeps its bias unquantized
                else:
                    ot += m.weight_params() * p.w
            memo[k] = (pk, cs, ot)
        pk, cs, ot = memo[k]
        packed_total += pk
        consts_total += cs
        other += ot
    vision = getattr(spec, "vision_params", 0)
    if vision:
        # multimodal checkpoints (gemma3) load their vision tower too: its nn.Linear modules
        # are 4-bit under QLoRA, the rest stays in the compute dtype (planner/spec.py)
        v_lin = 0
        for m in getattr(spec, "vision_linears", ()):
            v_lin += m.weight_params()
            if setup.method == "qlora":
                packed, consts = _quantized_tensor_bytes(m.in_features * m.out_features, setup, p.w)
                packed_total += packed * m.count
                consts_total += consts * m.count
                other += (m.out_features * m.count if m.bias else 0) * p.w
            else:
                other += m.weight_params() * p.w
        other += (vision - v_lin) * p.w
        details["vision_tower"] = vision * p.w
    if setup.method == "qlora":
        if setup.double_quant:
            consts_total += BNB_DQ_CODE_BYTES  # the shared dynamic map of the absmax quantization
        details["weights_4bit_packed"] = packed_total
        details["weights_4bit_constants"] = consts_total
    quant = packed_total + consts_total + details.get("lm_head_4bit", 0)
    details["linear_weights_16bit"] = other
    if setup.method == "full":
        return 0, 0  # all weights are the trainable parameters (adapter_weights)
    return quant, embed + head + norms + other


# -- trainable parameters ----------------------------------------------------------------------
def _trainable_tensors(spec, setup: TrainSetup, p: _Path, lora_layers) -> list[tuple[int, int]]:
    """(element count, how many such tensors) of the trainable tensors: LoRA A and B per
    adapted module instance, or every parameter for full fine-tuning."""
    out: dict[int, int] = {}

    def add(n: int, times: int = 1) -> None:
        if n and times:
            out[n] = out.get(n, 0) + times

    if setup.method == "full":
        add(spec.embedding_params())
        add(_head_params(spec, setup, p))
        memo: dict[int, list] = {}
        for layer in spec.layers:
            k = id(layer)
            if k not in memo:
                memo[k] = [(m.in_features * m.out_features, m.count) for m in layer] + \
                          [(m.out_features, m.count) for m in layer if m.bias]
            for n, c in memo[k]:
                add(n, c)
        # norms: one tensor per norm; the exact split does not matter for the optimizer rules
        per_layer_norms = max(1, getattr(spec, "norms_per_layer", 2))
        if spec.norm_params_per_layer:
            add(spec.norm_params_per_layer // per_layer_norms, per_layer_norms * spec.num_layers)
        add(spec.final_norm_params)
        return list(out.items())
    r = setup.lora_rank
    memo2: dict[tuple, list] = {}
    times: dict[tuple, int] = {}
    for layer in lora_layers:
        key = tuple(map(id, layer))
        times[key] = times.get(key, 0) + 1
        if key not in memo2:
            items = []
            for m in layer:
                # peft `_convert_peft_config_moe` doubles the rank of fused gate_up experts
                rr = r * getattr(m, "lora_rank_factor", 1)
                if getattr(m, "kind", "linear") == "expert":
                    # peft ParamWrapper on the fused (E, out, in) weight: lora_A (E*r, in) and
                    # lora_B (out, E*r), one tensor each
                    items += [(m.count * rr * m.in_features, 1), (m.out_features * rr * m.count, 1)]
                else:
                    items += [(rr * m.in_features, m.count), (m.out_features * rr, m.count)]
            memo2[key] = items
    for key, items in memo2.items():
        for n, c in items:
            add(n, c * times[key])
    if _head_adapted(setup):
        add(r * spec.hidden_size)
        add(spec.vocab_size * r)
    if getattr(spec, "vision_linears", ()):
        # peft matches module names over the whole model: the vision linears get adapters too
        from planner.spec import resolve_vision_lora_targets

        for m in resolve_vision_lora_targets(spec, _body_targets(setup)):
            add(r * m.in_features, m.count)
            add(m.out_features * r, m.count)
    return list(out.items())


def _optimizer_states(sizes: list[tuple[int, int]], setup: TrainSetup, p: _Path) -> tuple[int, int, int]:
    """(bytes inside torch's allocator, bytes in paged unified memory, step temporaries)."""
    opt = setup.optimizer
    torch_bytes = paged = 0
    if opt == "adamw":
        # torch/optim/adamw.py `_init_group`: exp_avg, exp_avg_sq = zeros_like(p)
        total = sum(n * c for n, c in sizes)
        torch_bytes = 2 * total * p.opt_state
        # torch/optim/adamw.py `_multi_tensor_adamw` (foreach, the CUDA default):
        # exp_avg_sq_sqrt = torch._foreach_sqrt(...) is one state-sized temporary
        temp = total * p.opt_state
        return torch_bytes, 0, temp
    paged_opt = opt.startswith("paged")
    eight_bit = opt.endswith("8bit")
    for n, c in sizes:
        if eight_bit and n >= BNB_MIN_8BIT_SIZE:
            states = 2 * n  # state1, state2 uint8
            torch_bytes += c * 2 * 4 * -(-n // BNB_OPT_BLOCK)  # absmax1, absmax2 fp32 per 256
        else:
            states = 2 * 4 * n  # 32-bit states (bnb 32-bit, or 8-bit below min_8bit_size)
        if paged_opt and n >= BNB_PAGED_MIN_NUMEL:
            paged += c * states
        else:
            torch_bytes += c * states
    return torch_bytes, paged, 0


# -- activations -------------------------------------------------------------------------------
@dataclass
class _Layer:
    saved_attn: int = 0  # bytes autograd keeps from the attention half (norm, q/k/v/o, LoRA)
    saved_mlp: int = 0  # bytes kept from the MLP half (norm, gate/up/down or experts, LoRA)
    fwd_attn: int = 0  # extra bytes live at the worst moment of the attention forward
    fwd_mlp: int = 0  # extra bytes live at the worst moment of the MLP forward
    w_attn: int = 0  # extra bytes live at the worst moment of the attention backward
    w_mlp: int = 0  # extra bytes live at the worst moment of the MLP backward
    dequant: int = 0  # largest dequantized 4-bit weight (QLoRA)
    w_shard: int = 0  # a tiled MLP: extra bytes live at the worst moment of one shard's backward

    @property
    def saved(self) -> int:
        return self.saved_attn + self.saved_mlp

    @property
    def fwd_transient(self) -> int:
        # the attention half runs before the MLP half has saved anything
        return max(self.fwd_mlp, self.fwd_attn - self.saved_mlp, 0)

    @property
    def bwd_working(self) -> int:
        # the backward runs the MLP half first (everything still saved), then the attention
        # half, by which time the MLP half's saved tensors have been released
        return max(self.w_mlp, self.w_attn - self.saved_mlp, 0)


# modules that read a decoder layer's (normed) input directly
_LAYER_INPUT_READERS = ("q_proj", "k_proj", "v_proj", "qkv_proj")
_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")


def _experts_adapted(spec, setup: TrainSetup, lora_layers=None) -> bool:
    """peft adapts transformers-5 fused MoE experts (and the router) when the targets are
    all-linear (peft utils/transformers_weight_conversion.py `_convert_peft_config_moe` maps
    the v4 names to `target_parameters`) or name the expert parameters."""
    if setup.method == "full" or not spec.num_experts:
        return False
    layers = lora_layers if lora_layers is not None else _lora_modules(spec, setup)
    return any(getattr(m, "kind", "linear") == "expert" for layer in layers for m in layer)


def _lora_dropout(spec, setup: TrainSetup, lora_layers=None) -> float:
    # tuneplan/training/modeling.py `prepare_for_training`: peft's ParamWrapper refuses
    # dropout, so LoRA on fused experts runs with dropout 0 everywhere
    return 0.0 if _experts_adapted(spec, setup, lora_layers) else setup.lora_dropout


def _mask_elems(b: int, s: int, setup: TrainSetup, attn: str = "sdpa") -> int:
    """Elements of the 4-D attention mask: trl's padding-free packing flattens a micro-batch
    into one row of b*s tokens whose block-diagonal mask is (1, 1, b*s, b*s)
    (transformers masking_utils.py `find_packed_sequence_indices`); padded rows give
    (b, 1, s, s). Eager attention never gets a flattened micro-batch: its packed runs use
    trl's `wrapped` rows of s tokens (tuneplan/training/sft.py `packing_strategy`), so its
    mask and scores are b x s x s, linear in the micro-batch."""
    return (b * s) ** 2 if setup.packing and attn != "eager" else b * s * s


def _norm_saved(tokens: int, width: int, trainable: bool, a: int, chunked: bool = False,
                aliased: bool = False) -> int:
    if chunked:
        # tuneplan/training/long_context.py `ChunkedRMSNorm.forward`: `ctx.save_for_backward(x,
        # rstd)`, the input in its own dtype (no new bytes when `aliased`: the input is a tensor
        # kept anyway, the checkpointed layer input) and one fp32 value per position
        return (0 if aliased else tokens * width * a) + tokens * 4
    # transformers models/llama/modeling_llama.py `LlamaRMSNorm.forward`:
    # hidden_states.to(float32) is saved by pow/mul (fp32 copy); weight * x.to(dtype) saves
    # x only when the weight trains (autograd saves an input only for a gradient it needs).
    return tokens * width * 4 + (tokens * width * a if trainable else 0) + tokens * 4


def _layer_activations(spec, layer, lora, setup: TrainSetup, p: _Path, b: int, s: int, attn: str,
                       masked: bool, input_grad: bool = True, device: str = "cuda",
                       dropout: float = 0.0) -> _Layer:
    T = b * s
    a = p.act
    h = spec.hidden_size
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    full = setup.method == "full"
    out = _Layer()
    norms = max(2, getattr(spec, "norms_per_layer", 2))
    # the first norm of a layer whose input needs no gradient (layer 0 without checkpointing:
    # `enable_input_require_grads` is only called with checkpointing) saves nothing.
    # gemma2/3 have 4 norms: input + post-attention on the attention side, pre/post-MLP.
    attn_norms = norms // 2 - (0 if input_grad else 1)
    chunked = chunked_norm_applies(spec, setup)
    # the chunked input norm saves the layer input itself: under checkpointing, the checkpoint's
    # own saved input (torch/utils/checkpoint.py recomputes with the tensors it kept)
    attn_norm_saved = attn_norms * _norm_saved(T, h, full, a, chunked, aliased=setup.grad_checkpointing)
    mlp_norm_saved = (norms - norms // 2) * _norm_saved(T, h, full, a, chunked)
    out.saved_attn += attn_norm_saved
    out.saved_mlp += mlp_norm_saved
    if getattr(spec, "qk_norm", False):
        # qwen3/gemma3 per-head q_norm/k_norm: fp32 copies of q and k
        out.saved_attn += T * (nh + nkv) * hd * 4 + 2 * T * 4
    # -- attention (transformers integrations/sdpa_attention.py, eager_attention_forward) ----
    qd, kvd = nh * hd, nkv * hd
    if full:
        # q/k/v input (the normed hidden) saved for the weight gradients; the o_proj input is
        # the attention output SDPA already saves (flash writes it in (b, s, heads, dim) layout)
        out.saved_attn += T * h * a
    if attn == "eager":
        # repeat_kv copies k and v to all heads; matmul(q, k^T) saves q and k; the softmax
        # runs in fp32 (saves its output) and is cast back (saved by matmul with v).
        scores = nh * _mask_elems(b, s, setup, attn)  # b rows of s x s scores per head
        probs = scores * (4 + a)
        if spec.attn_logit_softcapping:
            probs += scores * a  # gemma2: tanh soft-capping saves its output
        out.saved_attn += T * qd * a * 3 + probs  # q and the head-repeated k, v
        out.fwd_attn = max(out.fwd_attn, scores * 2 * a)  # matmul output + scaled copy
        # softmax backward: incoming fp32 grad + its fp32 result (the bf16 probs are released)
        out.w_attn = max(out.w_attn, scores * (4 + 4 - a))
    else:
        # flash / memory-efficient SDPA save q, k, v, out and the fp32 logsumexp; with a
        # mask, GQA on CUDA uses repeat_kv copies (`use_gqa_in_sdpa` needs mask None); with a
        # single KV head `repeat_kv`'s expand + reshape is a view (a size-1 dim merges with the
        # stride-0 one), so the kernel saves the unrepeated k and v
        kv_saved = qd if ((masked and attn == "sdpa" and nkv > 1) or p.profile.repeat_kv) else kvd
        out.saved_attn += T * (qd + 2 * kv_saved + qd) * a + T * nh * 4
        out.w_attn = max(out.w_attn, T * (qd + 2 * kv_saved) * a + T * nh * 4 +
                         (_sdpa_backward_workspace(b, s, nh, nkv, hd, a, masked) if attn == "sdpa" and device != "cpu"
                          else 0))
        if masked and attn == "sdpa":
            # aten attention.cpp `scaled_dot_product_attention`: `convert_boolean_attn_mask`
            # turns the shared bool mask into a float bias in the query dtype for every call;
            # the memory-efficient (CUDA) / CPU flash kernel saves it for its backward
            out.saved_attn += _mask_elems(b, s, setup) * a
    if not p.profile.fused_qkv and any(m.name == "qkv_proj" for m in layer) and \
            (nkv == nh or (attn == "sdpa" and not masked)):
        # transformers phi3 `Phi3Attention.forward`: q, k, v are slices of the fused qkv_proj
        # output; q and k are replaced by their RoPE results, but v stays a view, and the
        # attention saves v (no repeat_kv copy with one query per KV head, or with SDPA's
        # native grouped-query attention): the whole q/k/v output stays alive
        out.saved_attn += T * (qd + kvd) * a
    if p.profile.fused_qkv and nkv == nh:
        # litgpt model.py `CausalSelfAttention.forward`: `qkv.view(B, T, groups, q_per_kv + 2,
        # hs).permute(0, 2, 3, 1, 4).split(...)`; with one query per KV group
        # `v.reshape(B, -1, T, hs)` is a view, not a copy, and the attention kernel saves v, so
        # the whole fused q/k/v output stays alive (q and k are replaced by their RoPE copies)
        out.saved_attn += T * (qd + kvd) * a
    # -- MLP -----------------------------------------------------------------------------------
    experts = [m for m in layer if getattr(m, "kind", "linear") == "expert"]
    if experts:
        k = max(1, spec.experts_per_token)
        inter = getattr(spec, "moe_intermediate_size", 0) or spec.intermediate_size
        E = spec.num_experts or max(m.count for m in experts)
        adapted = full or any(getattr(m, "kind", "linear") == "expert" for m in lora)
        # transformers models/mixtral/modeling_mixtral.py `MixtralExperts.forward`: per routed
        # token, gate_up output (kept by the activation: gate is a view of it), activation
        # output, down output (saved by the routing-weight multiply); router softmax in fp32.
        per_tok = (2 * inter + inter + h) * a + 4
        if adapted:
            # the expert weights need gradients (full) or are LoRA-parametrized (peft
            # `ParamWrapper`): the gathered input and the act*up product are saved too
            per_tok += (h + inter) * a
        out.saved_mlp += T * k * per_tok + T * E * 4 + T * k * 8
        if adapted and not full:
            # peft tuners/lora/layer.py `ParamWrapper._activate_lora`: the weight is
            # parametrized as base + einsum(B, A) * scaling, one merged (E, out, in) weight per
            # forward in the compute dtype, saved by the expert matmuls for the input gradient
            merged = sum(m.in_features * m.out_features * m.count for m in experts) * a
            out.saved_mlp += merged
            # the einsum runs under autocast (bf16 bmm): one delta-sized transient next to its
            # merged weight, before the later expert tensors of the layer (down after gate_up)
            # have merged weights; in the backward each merged weight's gradient comes after the
            # later ones' merged weights were released. Either way: a tensor's size less the
            # merged weights after it, at its worst
            sizes = [m.in_features * m.out_features * m.count for m in experts]
            worst = later = 0
            for n in reversed(sizes):
                worst = max(worst, n - later)
                later += n
            out.fwd_mlp = max(out.fwd_mlp, worst * p.lora_linear)
            out.w_mlp = max(out.w_mlp, worst * a)  # the merged weight's gradient
        out.w_mlp = max(out.w_mlp, T * k * inter * 3 * a)
    else:
        inter = spec.intermediate_size
        # LlamaMLP: act_fn(gate) saves gate, act*up saves both factors
        out.saved_mlp += 3 * T * inter * a
        if full:
            out.saved_mlp += T * h * a + T * inter * a  # gate/up input, down input
        # mul backward: grad of the product plus grads of both factors
        out.w_mlp = max(out.w_mlp, 3 * T * inter * a)
    # -- LoRA adapters (peft/tuners/lora/layer.py `Linear.forward`) ----------------------------
    r = setup.lora_rank
    drop = dropout > 0
    shared_inputs: set[object] = set()
    # torch aten Dropout.cpp `dropout`: on CUDA the fused `native_dropout` saves a bool mask;
    # on the CPU `_dropout_impl` multiplies by a noise tensor of the input dtype and saves it
    drop_in_dtype = p.adapter if p.lora_cast else p.lora_linear
    mask_bytes = 1 if device != "cpu" else drop_in_dtype
    autocast = p.lora_linear != p.adapter
    if p.profile.lora_qkv_fused:
        qkv_adapted = [m for m in lora if m.name in ("q_proj", "k_proj", "v_proj")]
        if 0 < len(qkv_adapted) < 3:
            # litgpt lora.py `LoRAQKVLinear.zero_pad`: with only some of q/k/v adapted, the
            # adapter output is scattered into a zero q/k/v-sized tensor by `index_copy`, whose
            # autograd node saves its `source` (torch derivatives.yaml `index_copy`:
            # `expand_as(source)`): a copy of the adapted part of the q/k/v output
            out.saved_attn += T * sum(m.out_features * m.count for m in qkv_adapted) * p.lora_linear
    for m in lora:
        if getattr(m, "kind", "linear") == "expert":
            if autocast:  # the autocast copies of the expert LoRA weights (see below)
                rr = r * getattr(m, "lora_rank_factor", 1)
                out.saved_mlp += m.count * rr * (m.in_features + m.out_features) * p.lora_linear
            continue  # the rest of peft's ParamWrapper is in the MoE part above
        n_tok = T * m.count
        fin = m.in_features
        in_attn = m.name in _ATTN_MODULES
        reads_layer_input = not input_grad and fin == h and m.name in _LAYER_INPUT_READERS
        saved = 0
        if autocast:
            # torch autocast caches the low-precision copy of each fp32 LoRA weight for the
            # whole forward (autocast_mode.cpp `cached_cast`); F.linear saves it
            saved += (r * fin + m.out_features * r) * m.count * p.lora_linear
        fused_qkv = p.profile.lora_qkv_fused and m.name in ("q_proj", "k_proj", "v_proj")
        if fused_qkv and "qkv" in shared_inputs:
            pass  # litgpt `LoRAQKVLinear`: one dropout + one lora_A for all of q/k/v
        elif p.lora_cast or drop:
            if fused_qkv:
                shared_inputs.add("qkv")
            # x.to(adapter dtype) (and dropout) make a new tensor per adapted module; the
            # A-linear saves it (in its compute dtype: the autocast cast is another copy)
            per_in = p.lora_linear + (mask_bytes if drop and not reads_layer_input else 0)
            saved += n_tok * fin * per_in
            # transient: fp32 cast + dropout output before the autocast cast
            tr = n_tok * fin * (p.adapter * (2 if drop else 1))
            if in_attn:
                out.fwd_attn = max(out.fwd_attn, tr)
            else:
                out.fwd_mlp = max(out.fwd_mlp, tr)
        else:
            # no copy: the A-linear saves the module's own input, shared by modules that
            # read the same tensor (q/k/v, gate/up)
            key = (fin, m.path.split(".")[0] if getattr(m, "path", "") else m.name[:1])
            # o_proj reads the attention output: with SDPA (flash / memory-efficient write it
            # in (b, s, heads, dim) layout) `transpose(1, 2).contiguous()` is a view of the
            # output the kernel already saves; eager attention's is a copy
            attn_out_view = m.name == "o_proj" and attn != "eager"
            if key not in shared_inputs and not full and not attn_out_view:
                shared_inputs.add(key)
                saved += n_tok * fin * p.lora_linear
        saved += n_tok * r * p.lora_linear  # lora_A output, saved by lora_B
        # backward through the adapter input: grad in the linear dtype, then through the
        # cast / dropout in the adapter dtype, next to the base path's input grad
        # (grad in the linear dtype; then the cast backward and the dropout backward each
        # make one more input-sized gradient in the adapter dtype)
        chain = n_tok * fin * (p.lora_linear + p.adapter * (int(p.lora_cast) + int(drop)))
        if in_attn:
            out.saved_attn += saved
            out.w_attn = max(out.w_attn, chain + n_tok * fin * a)
        else:
            out.saved_mlp += saved
            out.w_mlp = max(out.w_mlp, chain + n_tok * fin * a)
    # -- 32-bit weights under 16-bit autocast (e.g. litgpt/Lightning "bf16-mixed") ------------
    if p.w > a and setup.method != "qlora":
        # autocast_mode.cpp `cached_cast`: each F.linear casts its fp32 weight to 16 bits and
        # saves that copy for the input gradient (frozen weights are not cached, so every
        # layer's copy lives until its backward)
        for m in layer:
            wb = m.in_features * m.out_features * m.count * a
            if m.name in _ATTN_MODULES:
                out.saved_attn += wb
            else:
                out.saved_mlp += wb
    # -- QLoRA dequantization (bitsandbytes autograd/_functions.py `MatMul4Bit`) ---------------
    if setup.method == "qlora" and p.profile.bnb_saves_input:
        # older bitsandbytes `MatMul4Bit.forward` kept `ctx.tensors = (A, B)`: every 4-bit
        # linear saved its input although no weight gradient is ever computed (0.50 keeps
        # (None, B)). Inputs: normed hidden (q/k/v, shared), attention output (o), normed
        # hidden (gate/up, shared), act*up product (down)
        names = {m.name for m in layer if m.quantizable()}
        qd = nh * hd
        # the o_proj input is a view of the attention output, which the SDPA kernels already
        # save (its (b, s, heads, dim) layout makes `y.transpose(1, 2).reshape` a view); eager
        # attention's `reshape` of the transposed product is a copy
        o_in = T * qd * a if ("o_proj" in names and attn == "eager") else 0
        out.saved_attn += T * h * a + o_in
        if not experts:
            out.saved_mlp += T * h * a + T * spec.intermediate_size * a
    if setup.method == "qlora":
        # `MatMul4Bit.backward` dequantizes the whole weight for grad_A = grad @ W; it runs after
        # the adapter branch of the same module, whose input gradient is already accumulated
        for m in layer:
            if not m.quantizable():
                continue
            w = _dequant_bytes(m.in_features * m.out_features, setup, p) + 2 * T * m.in_features * a
            if m.name in _ATTN_MODULES:
                out.w_attn = max(out.w_attn, w)
            else:
                out.w_mlp = max(out.w_mlp, w)
        biggest = max((m.in_features * m.out_features for m in layer if m.quantizable()), default=0)
        out.dequant = _dequant_bytes(biggest, setup, p)
    # the RMSNorm backward (its temporaries, `_norm_backward`) runs after the half it feeds has
    # released its saved tensors, all but the norm's own
    if attn_norms > 0:
        out.w_attn = max(out.w_attn, _norm_backward(T, h, chunked, a) - (out.saved_attn - attn_norm_saved))
    out.w_mlp = max(out.w_mlp, _norm_backward(T, h, chunked, a) - (out.saved_mlp - mlp_norm_saved))
    # grad of the residual stream flowing through the layer
    out.w_attn += 2 * T * h * a
    out.w_mlp += 2 * T * h * a
    return out


def _norm_backward(tokens: int, width: int, chunked: bool = False, a: int = 2) -> int:
    """Bytes the backward of one RMSNorm over `tokens x width` holds at its worst moment.

    Chunked (tuneplan/training/long_context.py `ChunkedRMSNorm.backward`): the input gradient
    `dx = torch.empty_like(x)` (tokens x width, the input dtype) and, for one chunk of
    `norm_chunk_tokens` positions, the fp32 copy of the input, the fp32 gradient `g` and the
    product `g * x32` its row sums reduce (three fp32 chunk x width tensors), plus the row sums.

    transformers `LlamaRMSNorm.forward` computes in fp32 (`x32 = x.to(float32)`, `x32 *
    rsqrt(x32.pow(2).mean(-1) + eps)`); autograd then runs, in order: `MulBackward0` (the grad of x32
    through the product, fp32, kept for accumulation), the mean's backward (the rsqrt grad expanded
    and divided: an fp32 tensor) and `pow_backward` (torch/csrc/autograd/FunctionsManual.cpp:
    `grad * (exponent * self.pow(exponent - 1))`, two more fp32 temporaries): four fp32 tokens x
    width tensors at once (the CUDA-semantics trace's peak op at 32k tokens with a tiled MLP:
    `div.Scalar`, `pow.Tensor_Scalar`, `mul.Scalar` next to the first product's `mul.Tensor`)."""
    if chunked:
        c = norm_chunk_tokens(tokens, width)
        return tokens * width * a + 3 * c * width * 4 + c * 4
    return 4 * tokens * width * 4


def _tiled(full: _Layer, shard: _Layer, spec, setup: TrainSetup, p: _Path, T: int, S: int) -> _Layer:
    """A dense decoder layer whose MLP runs tiled (liger_kernel/ops/tiled_mlp.py
    `LigerTiledMLPFunction`, DeepSpeed `TiledMLP`): `full` is the layer over all T tokens,
    `shard` the same layer over the S tokens of one shard; the attention half and the norms are
    those of `full`.

    tuneplan/training/long_context.py `TiledMLP` (the design of Arctic Long Sequence Training,
    DeepSpeed `TiledMLP`, `liger_kernel.ops.tiled_mlp`). forward: `ctx.save_for_backward(x)` keeps
    only the MLP input; the shards run under `torch.no_grad()` (one shard's intermediates at a
    time), each copied into one preallocated output. backward: `x_grad = torch.empty_like(x)`;
    each shard re-runs its forward with grad enabled and `torch.autograd.grad`s it at once, so one
    shard's saved tensors and backward working set exist next to x_grad and the incoming gradient
    (the residual gradient, as in an untiled layer)."""
    a, h = p.act, spec.hidden_size
    mlp_norms = max(2, getattr(spec, "norms_per_layer", 2))
    mlp_norms -= mlp_norms // 2
    full_ft = setup.method == "full"
    chunked = chunked_norm_applies(spec, setup)
    norm_T = mlp_norms * _norm_saved(T, h, full_ft, a, chunked)
    norm_S = mlp_norms * _norm_saved(S, h, full_ft, a, chunked)
    # one shard's MLP + MLP-LoRA saved tensors; its input is a view of the saved MLP input
    # (`x.narrow(...)` in `TiledMLP.backward`), no new bytes
    inner_saved = max(0, shard.saved_mlp - norm_S - S * h * a)
    # its backward at its worst (the CUDA-semantics trace, inside the down projection's backward):
    # the dequantized 4-bit weight (QLoRA), one S x intermediate gradient and the shard's S x hidden
    # input gradient before it is copied into x_grad
    inner_work = shard.dequant + S * spec.intermediate_size * a + S * h * a
    inter = spec.intermediate_size
    out = _Layer(saved_attn=full.saved_attn, fwd_attn=full.fwd_attn, w_attn=full.w_attn, dequant=full.dequant)
    out.saved_mlp = norm_T + T * h * a
    # forward: the output (T x h) + one shard's act(gate), up and their product (three
    # S x intermediate tensors under no_grad), its LoRA transients and its output part
    out.fwd_mlp = T * h * a + S * h * a + 3 * S * inter * a + shard.fwd_mlp
    # backward: x_grad and one shard at a time; or the post-MLP-input norm's backward (the MLP
    # input released by then). During a shard's backward the only residual gradient is the incoming
    # one; the second (the sum into the residual stream) comes with the norm's backward
    out.w_shard = T * h * a + inner_saved + inner_work + T * h * a
    out.w_mlp = _norm_backward(T, h, chunked, a) - T * h * a + 2 * T * h * a
    return out


def _sdpa_backward_workspace(b: int, s: int, nh: int, nkv: int, hd: int, a: int, masked: bool) -> int:
    """Scratch the CUDA SDPA backward kernel allocates inside the op, next to dq/dk/dv.

    Without a mask and in 16 bits the CUDA dispatcher picks flash (sdp_utils.cpp), whose
    `mha_bwd` (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp) allocates
    `softmax_d` fp32 (b, h, round128(s)), `dq_accum` fp32 (b, round128(s), h, round32(d)) and,
    under grouped-query attention, `dk_expanded`/`dv_expanded` (b, s, h, d). With a mask, the
    memory-efficient kernel (mem_eff_attention/kernel_backward.h `workspace_size`) accumulates
    the query gradient in fp32 (64 x 64 tiles) and keeps fp32 `delta` (b, h, s)."""
    r = lambda x, m: (x + m - 1) // m * m  # noqa: E731
    if not masked and a < 4 and hd <= 256:
        ws = 4 * b * nh * r(s, 128) + 4 * b * r(s, 128) * nh * r(hd, 32)
        if nkv != nh:
            ws += 2 * b * s * nh * hd * a
        return ws
    return 4 * b * nh * s + (4 * b * nh * r(s, 64) * r(hd, 64) if a < 4 else 0)


def _dequant_bytes(n: int, setup: TrainSetup, p: _Path) -> int:
    """Live bytes while one 4-bit weight of n elements is dequantized for a matmul
    (bitsandbytes `MatMul4Bit`: `dequantize_4bit(B, quant_state).to(A.dtype)`): the weight in
    the compute dtype, plus the quant state's fp16 copy when it was quantized from fp16."""
    return n * p.w + (2 * n if p.profile.bnb_dequant_fp16 else 0)


def _loss_transient(spec, setup: TrainSetup, p: _Path, b: int, T: int, details: dict, notes: list,
                    device: str = "cuda") -> tuple[int, int]:
    """(bytes live at the start of the loss backward, bytes saved by the head for backward)."""
    V, h = spec.vocab_size, spec.hidden_size
    a = p.act
    impl = _loss_impl(setup, p)
    head_lora = T * V * a if _head_adapted(setup) else 0  # LoRA-on-head output, added to logits
    if impl == "chunked":
        # litgpt model.py `GPT.forward(lm_head_chunk_size=128)` returns the logits as a list of
        # 128-position chunks; utils.py `chunked_cross_entropy` runs one cross-entropy per chunk.
        # Lightning Fabric wrappers.py `_FabricModule.forward` ends with
        # `precision.convert_output(output)` (plugins/precision/half.py, bitsandbytes.py:
        # `_convert_fp_tensor(..., torch.get_default_dtype())`): the chunks are cast to fp32
        # (`loss_upcast`) and the 16-bit ones released. The training loop keeps the list
        # (`logits = model(...)`) through the backward; each chunk's log_softmax saves its
        # output; the backward starts on one chunk (nll and log_softmax gradients).
        lg = 4 if p.profile.loss_upcast else a
        logits = T * V * lg
        lse = T * V * lg
        rows = b * min(T // max(1, b), 128)
        chunk = rows * V * lg * 2
        # the LoRA head's output exists per chunk only (added to that chunk's logits)
        head_chunk = rows * V * a if head_lora else 0
        fwd = T * V * a + (logits if lg != a else 0)  # 16-bit chunks + their fp32 copies
        details["logits"] = logits
        details["loss_log_softmax"] = lse
        return max(fwd, logits + lse + chunk) + head_chunk, 0
    if impl == "transformers":
        logits = T * V * a
        # transformers loss/loss_utils.py `ForCausalLMLoss`: logits.float(); cross_entropy's
        # log_softmax saves its fp32 output. At the start of the backward nll_loss_backward
        # and log_softmax_backward each produce one more fp32 logits-sized tensor.
        upcast = 4 if p.profile.loss_upcast else a
        lse = T * V * upcast
        bwd = 3 * lse
        # forward: bf16 logits + fp32 copy + log_softmax output; accelerate
        # utils/operations.py `convert_outputs_to_fp32` adds an fp32 copy of the returned logits
        fwd = logits + 2 * lse
        if p.profile.autocast and a < 4:
            fwd = max(fwd, logits + lse + T * V * 4)
        if spec.final_logit_softcapping:
            # gemma2 `logits = tanh(logits / cap) * cap`: tanh saves its 16-bit output
            fwd += logits
            bwd += logits
        details["logits"] = logits
        details["loss_fp32_logits"] = lse
        details["loss_backward_logit_grads"] = 2 * lse
        peak = max(fwd, bwd) + head_lora
        return peak, 0
    if impl == "liger":
        # liger_kernel/ops/fused_linear_cross_entropy.py: chunks of
        # next_pow2(ceil(BT / ceil(V / H))) rows; grad_input (BT x H) kept for the backward
        inc = -(-V // h)
        chunk = 1 << max(0, math.ceil(math.log2(max(1, -(-T // inc)))))
        chunk = min(chunk, T)
        tile = chunk * V * a + chunk * V * 4 * 0
        grad_in = T * h * a
        details["fused_ce_chunk"] = tile
        return tile + grad_in + T * 4, grad_in
    # trl 1.16 SFTTrainer fused LM head (trl/kernels/chunked_logprob.py `ChunkedLogProbFunction`,
    # trl/trainer/utils.py `add_fused_lm_head`): the last hidden states minus the final position
    # (N = b*(s-1) rows; a gathered copy of the labelled rows on CUDA, a reshape copy on the
    # CPU) are saved; one [min(N, 4096), min(V, 32768)] tile in the compute dtype is reused;
    # the backward accumulates grad_hidden in fp32 and returns it in the hidden dtype.
    N = max(1, T - b)
    rows = min(N, TRL_TOKEN_CHUNK)
    buf = rows * TRL_VOCAB_CHUNK * a  # `mm_buf` is allocated at the full chunk width
    n_tile = rows * min(V, TRL_VOCAB_CHUNK)
    saved = N * h * a + 2 * N * 4  # hidden rows, log_z and entropy
    if device == "cpu":
        # without Triton the tiles are folded with fp32 torch ops (`_forward_tile`: z, e, e*z
        # and the top-1 bool mask; `_backward_tile`: y, z, log_p, p, grad, the target bool
        # mask, (onehot - p) and its product with the incoming gradient)
        fold_fwd, fold_bwd = n_tile * (3 * 4 + 1), n_tile * (7 * 4 + 1)
        if spec.final_logit_softcapping:
            # the soft-cap branch keeps t = tanh(y / cap) next to the others
            fold_fwd += n_tile * 4
            fold_bwd += n_tile * 4
    else:
        fold_fwd = fold_bwd = 0  # the Triton kernels rewrite the tile in place
    stats = 7 * N * 4  # fp32 running statistics per row
    fwd = buf + fold_fwd + stats
    # backward: grad_hidden accumulates in fp32 and is returned in the hidden dtype
    bwd = buf + fold_bwd + N * h * 4 + 2 * N * 4
    details["fused_ce_chunk"] = buf
    return max(fwd, bwd, N * h * (4 + a)), saved


def _loss_impl(setup: TrainSetup, p: _Path) -> str:
    impl = p.profile.loss_impl
    if impl:
        return impl
    # tuneplan/training/sft.py: fused_ce -> trl's chunked LM head, else transformers' loss
    return "trl" if setup.fused_ce else "transformers"


def _offloaded_host_bytes(spec, setup: TrainSetup, p: _Path, L: int, T: int, b: int) -> int:
    """Pinned host bytes of one step's offloaded tensors (trl `OffloadActivations.pack_tensor`:
    `torch.empty_like(activation, pin_memory=True, device="cpu")`, each rounded by
    `pinned_bytes`): every decoder layer's input, the embedding's int64 token ids, the final
    RMSNorm's fp32 copy of the hidden states and its fp32 rsqrt (transformers `LlamaRMSNorm`; the
    chunked norm's input in its own dtype, `ChunkedRMSNorm`), and
    what the loss saves: trl's chunked LM head its labelled hidden rows and two fp32 statistics
    (trl/kernels/chunked_logprob.py; the LM head is called through its weight, so the
    `lm_head` no-offload hook of `get_act_offloading_ctx_manager` does not fire), transformers'
    loss its fp32 log-softmax output (the `lm_head` module itself is exempt)."""
    h, a = spec.hidden_size, p.act
    # the final norm: its fp32 copy, or the chunked norm's input in its own dtype (`_norm_saved`)
    blocks = [T * h * a] * L + [T * 8, T * h * (a if chunked_norm_applies(spec, setup) else 4), T * 4]
    if _loss_impl(setup, p) == "trl":
        n = max(1, T - b)
        blocks += [n * h * a, n * 4, n * 4]
    else:
        blocks.append(T * spec.vocab_size * 4)
    return sum(pinned_bytes(x) for x in blocks if x >= OFFLOAD_MIN_BYTES)


def _host_embedding_bytes(spec, setup: TrainSetup, p: _Path, T: int) -> int:
    """Host bytes of the host-resident embedding (tuneplan/training/long_context.py `HostEmbedding`):
    the table in ordinary pageable memory (no pinned rounding) plus, during the lookup, the token
    ids copied down (int64) and the looked-up rows before they are copied up to the card."""
    return spec.embedding_params() * p.w + T * 8 + T * spec.hidden_size * p.w


def _attention_kind(spec, setup: TrainSetup, notes: list) -> str:
    attn = setup.attn
    if spec.model_type == "gemma2" and attn != "eager":
        # transformers refuses SDPA/flash for Gemma-2's soft-capping (modeling_gemma2.py):
        # the training path falls back to eager attention (tuneplan/training/modeling.py)
        notes.append("Gemma-2 uses eager attention (soft-capping): its scores grow with the square of the sequence length.")
        attn = "eager"
    if attn == "eager":
        if spec.model_type != "gemma2":
            notes.append("eager attention keeps batch x heads x seq^2 scores per layer (quadratic in the sequence length).")
    return attn


# -- the estimate ------------------------------------------------------------------------------
def estimate_memory(spec, setup: TrainSetup, gpu=None, *, device: str = "cuda",
                    padded_rows: bool = True, profile: CalibrationProfile = TUNEPLAN_STACK) -> MemoryEstimate:
    """Memory of the second optimizer step of `setup` on one GPU, in bytes.

    `spec`: a `planner.spec.ModelSpec`; `gpu`: a `planner.gpus.GPU` or None for a generic
    CUDA card (its architecture picks the cuBLAS workspace and context size). Sequences are
    `setup.seq_len` tokens long (packed, or the longest padded batch). Returns a breakdown
    (see `planner.setup.COMPONENTS`) with `torch_peak_bytes` (what
    `torch.cuda.max_memory_allocated()` reads) and `device_bytes` (nvidia-smi: reserved +
    CUDA context + cuBLAS workspace + paged optimizer buffers).
    `device="cpu"` predicts the same step run on the CPU (what the CPU trace test measures):
    dropout saves a noise tensor instead of a bool mask, trl's chunked LM head folds its tiles
    with fp32 torch ops instead of a Triton kernel. `padded_rows=False` says unpacked
    micro-batches hold rows of equal length (no padding, so transformers skips the 4-D mask).
    `profile` describes the training stack: tuneplan's own (`TUNEPLAN_STACK`) unless a
    calibration case models another one.
    """
    if setup.micro_batch <= 0 or setup.seq_len <= 0:
        raise ValueError(f"micro_batch and seq_len must be > 0 (got {setup.micro_batch}, {setup.seq_len})")
    if setup.offload_activations and not setup.grad_checkpointing:
        # what is offloaded are the checkpointed layer inputs: the training path turns
        # checkpointing on with offloading (planner/setup.py `offload_activations`)
        setup = replace(setup, grad_checkpointing=True)
    p = _resolve(setup, profile)
    details: dict[str, int] = {}
    notes: list[str] = []
    lora_layers = _lora_modules(spec, setup)
    b, s = setup.micro_batch, setup.seq_len
    T = b * s
    a = p.act
    h = spec.hidden_size

    quantized, unquantized = _weights(spec, setup, p, details)
    sizes = _trainable_tensors(spec, setup, p, lora_layers)
    trainable = sum(n * c for n, c in sizes)
    adapters = trainable * p.adapter
    grads = adapters  # gradients in the parameter dtype
    opt_torch, opt_paged, opt_temp = _optimizer_states(sizes, setup, p)
    details["trainable_params"] = trainable
    if opt_paged:
        details["optimizer_paged_unified_memory"] = opt_paged
        notes.append("paged optimizer buffers live in CUDA unified memory: counted on the card (nvidia-smi), "
                     "not in torch's max_memory_allocated; under memory pressure they page to the host.")
    static = quantized + unquantized + adapters + opt_torch

    attn = _attention_kind(spec, setup, notes)
    # a 4-D mask exists for trl's padding-free packing (block-diagonal) and for padded
    # micro-batches of several rows; flash-attention-2 takes varlen offsets instead
    masked = attn != "flash" and (setup.packing or (b > 1 and padded_rows))
    input_grad0 = setup.grad_checkpointing or setup.method == "full"
    dropout = _lora_dropout(spec, setup, lora_layers)
    # decoder layers are mostly identical: compute each distinct (layer, adapters) once;
    # identity of the module records keys the cache (value hashing would cost more than it saves)
    memo: dict = {}
    per_layer = []
    shards, shard_tokens = tiled_mlp_shards(setup, h)
    if setup.tiled_mlp:
        details["tiled_mlp_shards"] = shards
        details["tiled_mlp_shard_tokens"] = shard_tokens
        if spec.num_experts:
            notes.append("tiled MLP applies to dense MLPs only: the routed experts run untiled.")
    layer_types = getattr(spec, "layer_types", ()) or ()
    window = getattr(spec, "sliding_window", None)
    for i, (layer, lora) in enumerate(zip(spec.layers, lora_layers)):
        # a sliding-window layer needs a 4-D mask once the keys reach the window
        # (transformers masking_utils.py `_ignore_causal_mask_sdpa`: `kv_length >=
        # local_attention_size`), so SDPA takes the masked path there
        sliding = (attn == "sdpa" and window is not None and s >= window and i < len(layer_types)
                   and layer_types[i] == "sliding_attention")
        key = (id(layer), tuple(map(id, lora)), i > 0 or input_grad0, masked or sliding)
        hit = memo.get(key)
        if hit is None:
            hit = _layer_activations(spec, layer, lora, setup, p, b, s, attn, key[3],
                                     input_grad=key[2], device=device, dropout=dropout)
            if setup.tiled_mlp and not any(getattr(m, "kind", "linear") == "expert" for m in layer):
                shard = _layer_activations(spec, layer, lora, setup, p, 1, shard_tokens, attn, key[3],
                                           input_grad=key[2], device=device, dropout=dropout)
                hit = _tiled(hit, shard, spec, setup, p, T, shard_tokens)
            memo[key] = hit
        per_layer.append(hit)
    any_sliding = any(k[3] for k in memo) and not masked
    per_layer = per_layer or [_Layer()]
    L = len(per_layer)
    if masked and attn == "sdpa" and setup.packing:
        per = _mask_elems(b, s, setup) * a
        if per * L > 0.1 * (T * h * a * L + 1):
            notes.append(f"padding-free packing with SDPA builds a {b * s} x {b * s} block mask that every layer "
                         f"keeps as a float bias ({per / GiB:.2f} GiB per layer); flash-attention-2 avoids it.")
    # rotary cos/sin (one pair per forward, saved by the rotary multiplies; the shared bool
    # mask itself is not saved by anyone, each layer saves its own float copy, see above);
    # the batch: input_ids, labels, position_ids (int64)
    mask_bytes = 2 * T * spec.head_dim * a + 3 * T * 8
    if attn == "eager":
        # transformers masking_utils.py `eager_mask`: eager attention always takes an additive
        # float mask (b, 1, s, s) (fp32 as traced), live through the step
        mask_bytes += _mask_elems(b, s, setup, attn) * 4
    elif attn == "sdpa" and setup.grad_checkpointing and (masked or any_sliding):
        # the shared bool mask (masking_utils.py `sdpa_mask`) is an argument of every
        # checkpointed layer, and non-reentrant checkpointing keeps a layer's inputs for its
        # recomputation (torch/utils/checkpoint.py): it lives through the backward
        mask_bytes += _mask_elems(b, s, setup, attn)
    head_saved_norm = _norm_saved(T, h, setup.method == "full", a, chunked_norm_applies(spec, setup))  # final norm
    loss_peak, head_saved = _loss_transient(spec, setup, p, b, T, details, notes, device)
    if "lm_head_4bit" in details and _loss_impl(setup, p) == "chunked":
        # a 4-bit head (litgpt) dequantizes its whole weight in every forward/backward call
        # (bitsandbytes `MatMul4Bit`). The autograd engine runs every chunk's cross-entropy
        # backward first (they were recorded last), then the casts back to 16 bits, then the
        # head's matmuls: by then the log-softmax outputs are released, the fp32 logits (held
        # by the training loop) and the 16-bit logit gradients are live next to the weight
        head_bwd = details["logits"] + T * spec.vocab_size * a + \
            _dequant_bytes(spec.vocab_size * h, setup, p)
        loss_peak = max(loss_peak, head_bwd)
    elif "lm_head_4bit" in details and _loss_impl(setup, p) != "trl":
        loss_peak += _dequant_bytes(spec.vocab_size * h, setup, p)  # next to the logits
    if "lm_head_4bit" in details and _loss_impl(setup, p) != "trl":
        if p.profile.bnb_saves_input:
            head_saved += T * h * a  # older `MatMul4Bit` keeps the head's input (final norm output)
    if setup.method == "full" and not setup.fused_ce:
        head_saved += T * h * a  # lm_head input saved for its weight gradient
    if p.w > a:
        head_saved += (spec.lm_head_params() or spec.embedding_params()) * a  # 16-bit head copy
    if _head_adapted(setup):
        # LoRA on the lm_head: dropout copy of its input (+ mask) and lora_A's output
        head_saved += T * h * (p.lora_linear + (1 if dropout > 0 else 0)) + T * setup.lora_rank * p.lora_linear
    head_saved += head_saved_norm + mask_bytes
    biggest_layer = max(per_layer, key=lambda x: x.saved)
    dequant = max(x.dequant for x in per_layer)

    checkpointing = setup.grad_checkpointing
    offload = setup.offload_activations
    layer_input = T * h * a
    layers_inputs_fwd = 0
    if checkpointing:
        # torch/utils/checkpoint.py non-reentrant: only each layer's inputs (hidden states)
        # survive the forward; the backward recomputes one layer at a time.
        layer_inputs = L * layer_input
        if offload:
            # trl `OffloadActivations` (see OFFLOAD_*): the layer inputs go to pinned host memory;
            # the forward keeps the last `max_fwd_stash_size` of them (one of them the running
            # layer's input) plus the output it is writing, the backward the input being
            # recomputed and the one before it. LoRA/QLoRA: the first layer's input stays as well:
            # transformers `enable_input_require_grads` (a forward hook on the input embeddings:
            # `output.requires_grad_(True)`, for checkpointing a frozen base) makes the embedding
            # output a leaf, and its AccumulateGrad node in the graph holds it until the backward ends
            leaf = layer_input if (setup.method != "full" and L > OFFLOAD_FWD_STASH + 1) else 0
            layer_inputs = min(L, OFFLOAD_FWD_STASH + 1) * layer_input + leaf
            layers_inputs_fwd = layer_inputs
            details["offloaded_layer_inputs"] = L * layer_input
        saved = layer_inputs + head_saved
        bwd_layer = biggest_layer.saved + biggest_layer.bwd_working
        fwd_layer = max(x.fwd_transient for x in per_layer) + dequant * (T > BNB_FUSED_MAX_TOKENS)
        details["checkpointed_layer_inputs"] = layer_inputs
        details["recomputed_layer"] = biggest_layer.saved
    else:
        saved = sum(x.saved for x in per_layer) + head_saved
        bwd_layer = biggest_layer.bwd_working
        fwd_layer = max(x.fwd_transient for x in per_layer) + dequant * (T > BNB_FUSED_MAX_TOKENS)
        details["per_layer_activations"] = biggest_layer.saved
    if dequant:
        details["dequantized_weight"] = dequant

    # phases: (gradients live, saved activations live, transient) above `static`
    head_grads = 0
    if setup.method == "full":
        head_grads = (spec.lm_head_params() or spec.embedding_params()) * p.adapter
    g_acc = grads if setup.grad_accum > 1 else 0  # accumulated grads of earlier micro-batches
    # the head (final norm, loss inputs) runs its backward first: freed in the layer phases
    layers_saved = saved - head_saved
    loss_saved = saved
    if offload:
        # the loss runs after the last pack of a layer input: the stash then holds the head's
        # tensors (final norm, the loss's hidden rows), which `head_saved` counts, and the last
        # layer's output; the backward brings the inputs back one layer at a time (and the
        # first layer's input, a leaf, stays: see above)
        leaf = layer_input if setup.method != "full" else 0
        loss_saved = layer_input + leaf + head_saved
        layers_saved = min(L, OFFLOAD_BWD_LIVE) * layer_input + (leaf if L > OFFLOAD_BWD_LIVE else 0)
    if offload:
        # every layer's backward holds what the top one does (the leaf first input and the inputs
        # brought back), next to almost all of the gradients near the bottom
        bottom_saved = mask_bytes + layers_saved
    elif checkpointing:
        bottom_saved = mask_bytes + T * h * a
    else:
        bottom_saved = mask_bytes + per_layer[0].saved
    bottom_grads = max(g_acc, grads * (L - 1) // L)  # the last layer has not produced its grads yet
    shard_layer, shard_fewer = 0, 0
    if biggest_layer.w_shard:
        shard_layer = (biggest_layer.saved if checkpointing else 0) + biggest_layer.w_shard
        shard_fewer = layer_input if (offload and setup.method != "full" and L > OFFLOAD_BWD_LIVE) else 0
    fwd_phase = (g_acc, saved, fwd_layer)
    if offload:
        # measured by the CUDA-semantics trace (trl's hooks, step2.start and step2.forward_end marks):
        # LoRA/QLoRA keep the previous step's first-layer input (the `enable_input_require_grads`
        # leaf) and the gradient accumulated into it until the next backward
        prev = 2 * layer_input if setup.method != "full" else 0
        # the forward of a checkpointed layer holds, at its o_proj (transformers llama
        # `LlamaAttention.forward`, integrations/sdpa_attention.py): the normed input, the SDPA output
        # and its `transpose(1, 2).contiguous()` copy, the k and v states, the o_proj output and its
        # LoRA branch's scaled output; the offloaded stash and the leaves beside it, not the head's
        # tensors (the loss comes later: `loss_backward`)
        nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        o_lora = any(m.name == "o_proj" for layer in lora_layers[:1] for m in layer)
        attn_fwd = T * h * a + 2 * T * nh * hd * a + 2 * T * nkv * hd * a + T * h * a * (2 if o_lora else 1)
        fwd_phase = (g_acc, layers_inputs_fwd + mask_bytes + prev, max(fwd_layer, attn_fwd))
        loss_saved += prev
    phases = {
        "forward": fwd_phase,
        "loss_backward": (g_acc, loss_saved, loss_peak),
        # backward through the top layer: every activation still saved
        "layer_backward_top": (max(g_acc, head_grads), layers_saved + mask_bytes, bwd_layer),
        # backward through the bottom layer: almost all gradients exist
        "layer_backward_bottom": (bottom_grads, bottom_saved, bwd_layer),
        # the bottom layer's tiled-MLP shard backward under offloading: the layer recomputes from the
        # leaf first input itself, and only one brought-back input is live then (the CUDA-semantics
        # trace); the layer's later moments (the norm's backward) see two, as above
        "layer_backward_bottom_shard": (bottom_grads, bottom_saved - shard_fewer, shard_layer),
        "layer_backward_top_shard": (max(g_acc, head_grads), layers_saved + mask_bytes, shard_layer),
        "optimizer_step": (grads, 0, opt_temp),
    }
    totals = {k: sum(v) for k, v in phases.items()}
    worst = max(totals, key=lambda k: totals[k])
    grads_at_peak, saved_at_peak, transient = phases[worst]
    details.update({f"phase_{k}": v + static for k, v in totals.items()})
    arch = getattr(gpu, "arch", None) if gpu is not None else None
    context = CUDA_CONTEXT_BYTES.get(arch, CUDA_CONTEXT_BYTES[None])
    cublas = CUBLAS_THREADS * CUBLAS_WORKSPACE_BYTES.get(arch, CUBLAS_WORKSPACE_BYTES[None])
    if any(m.bias for layer in spec.layers[:1] for m in layer):
        # the forward's addmm takes a cuBLASLt workspace; the backward thread's only when it
        # re-runs the forward (checkpointing)
        cublas += CUBLASLT_WORKSPACE_BYTES * (2 if checkpointing else 1)
    if offload:
        details["host_activation_bytes"] = _offloaded_host_bytes(spec, setup, p, L, T, b)
    if "embed_tokens_host" in details:
        details["host_embedding_bytes"] = _host_embedding_bytes(spec, setup, p, T)
    details["cuda_context"] = context
    details["cublas_workspace"] = cublas
    # the workspaces are allocated by the first GEMMs of step 1 and kept: max_memory_allocated
    # of step 2 counts them
    torch_peak = static + totals[worst] + (cublas if device != "cpu" else 0)
    churn = saved_at_peak + transient
    allocator = int(ALLOC_FRAGMENTATION * churn)
    runtime = context + cublas
    on_card = torch_peak + allocator + context + opt_paged + (cublas if device == "cpu" else 0)

    comps = {
        "runtime_overhead": runtime,
        "quantized_weights": quantized,
        "unquantized_weights": unquantized,
        "adapter_weights": adapters,
        "gradients": grads_at_peak,
        "optimizer_states": opt_torch + opt_paged,
        "saved_activations": saved_at_peak,
        "transient_peak": transient,
        "allocator_overhead": allocator,
    }
    assert tuple(comps) == COMPONENTS
    details["peak_phase_" + worst] = torch_peak
    if _loss_impl(setup, p) == "transformers" and worst in ("loss_backward", "forward") and \
            details.get("loss_fp32_logits", 0) >= max(v for k, v in comps.items()
                                                      if k in TENSOR_COMPONENTS and k != "transient_peak"):
        notes.append("the fp32 logits of the loss are the largest item; a fused cross-entropy removes most of it.")
    return MemoryEstimate(
        components=comps,
        torch_peak_bytes=int(torch_peak),
        device_bytes=int(on_card),
        details=details,
        notes=tuple(notes),
    )
