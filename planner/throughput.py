"""Training speed, time and cost: a FLOP model over a roofline of the GPU, calibrated on
published throughput figures.

One micro-batch of `micro_batch x seq_len` tokens costs, on one GPU:

  matmuls     max(FLOPs / (peak x e_mm(T)), weight bytes / bandwidth)   (roofline per pass)
  memory-bound  element-wise traffic (norms, activations, rope, residuals, LoRA dropout,
              the fp32 logits and loss) and QLoRA dequantization, / (bandwidth x E_BW)
  host        Python/kernel-launch time of the HF + PEFT modules; the GPU waits when the
              kernels are shorter than their launches (tiny models, tiny micro-batches)

and the optimizer step adds its own memory traffic once per `grad_accum` micro-batches.

FLOPs per token (N = parameters of the matmuls a token passes through):
- forward 2N (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1);
- full fine-tuning backward 4N (input and weight gradients), so 6N in all (same source;
  Chinchilla, Hoffmann et al. 2022, appendix F);
- LoRA / QLoRA backward through a frozen base: input gradients only, 2N, plus the adapters'
  own forward/backward (2r(in+out) per adapted module and pass); Hu et al. 2021 (LoRA) sec. 4;
- gradient checkpointing recomputes each decoder layer's forward once more (+2N of the
  decoder layers; Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost");
- causal attention: QK^T and PV, 4 x ctx x heads x head_dim per token and layer, ctx = s/2
  for causal kernels that skip the masked half (flash / SDPA's flash and mem-efficient
  backends), s for eager/math attention that computes the full square; sliding-window layers
  attend to at most `sliding_window` tokens. Backward of flash attention is 2.5x its forward
  (it recomputes QK^T; Dao 2023, FlashAttention-2, sec. 3).
- tiled MLP (long context): the MLP forward runs once more per step, shard by shard, in the
  backward (tuneplan/training/long_context.py `TiledMLP`; Arctic Long Sequence Training,
  Bekman et al. 2025, arXiv:2506.13996): +2N of the dense MLPs, and each shard's call
  dequantizes the 4-bit MLP weights again;
- activation offloading (long context): the checkpointed layer inputs cross the host link
  twice (trl `OffloadActivations`): the forward copies run on a side stream behind the compute,
  the backward waits for each copy (its unpack hook makes the compute stream wait), at the
  card's pinned-copy rate (planner/gpus.py `host_link_gbs`);
- host-resident embedding (long context): each micro-batch's token ids go down and the looked-up
  rows (tokens x hidden, compute dtype) come up once, synchronously, at the same rate;
- QLoRA: bitsandbytes' 4-bit `Linear4bit` dequantizes the whole weight to the compute dtype
  before every matmul of a large token count (`bitsandbytes/autograd/_functions.py`
  `MatMul4Bit`: `dequantize_4bit` then `torch.nn.functional.linear`, forward and backward):
  read 0.5 B/param (+ absmax), write 2 B/param, per pass, per micro-batch. This is why QLoRA is
  slower than LoRA and why the gap grows at small micro-batches.

Per-GPU efficiency comes out of the roofline rather than a table per card: the same GEMM
efficiency applies to every card's tensor peak, and the memory-bound work (element-wise ops,
loss, dequantization) costs more on cards whose peak FLOP/s is high relative to their
bandwidth (H100, L40S) than on cards where it is low (RTX 3090), so achieved MFU differs by
card, micro-batch and model size. The few constants (E_MM_MAX, T_HALF, E_BW, E_DEQUANT,
HOST_SECONDS_PER_MODULE_CALL) are fitted to the published rows in `CALIBRATION` (from
`shared/data/measured.csv`, each with its source): predicted/published is within 30% for
every row and 1.0 in geometric mean; `tests/planner/test_throughput.py` checks that, the
QLoRA/LoRA time ratios of litgpt's A100 table and the long-sequence slowdown of fsdp_qlora.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.gpus import DEFAULT_INTER_NODE_GBS, GPU, host_link_gbs, interconnect_gbs
from planner.memory import chunked_norm_applies, embedding_offload_applies, norm_chunk_tokens, tiled_mlp_shards  # the rules the training path uses
from planner.setup import TrainSetup
from planner.spec import ModelSpec, resolve_lora_targets


# -- efficiency constants (calibrated: see CALIBRATION and the test) ----------------------
E_MM_MAX = 0.62
"""Fraction of the dense tensor peak large bf16 GEMMs reach in the HF/PEFT training path."""
T_HALF = 192
"""Tokens per matmul (micro_batch x seq_len) at which GEMM efficiency is half of E_MM_MAX."""
E_BW = 0.70
"""Fraction of peak bandwidth element-wise kernels reach."""
E_DEQUANT = 0.45
"""Fraction of peak bandwidth bitsandbytes' `dequantize_4bit` reaches (calibrated on the
QLoRA / LoRA time ratios of litgpt's A100 table, rows M011/M012 and M016/M017: 1.56 and 2.0
at micro-batch 1 and ~300-token Alpaca samples)."""
HOST_SECONDS_PER_MODULE_CALL = 60e-6
"""Host time to run one nn.Module forward+backward (launches, autograd, PEFT wrappers), s.
Order of magnitude from PyTorch eager dispatch overhead (~10 us per op, several ops per
module); calibrated on the small-model rows in CALIBRATION."""

# Element-wise bytes per token per decoder layer in the forward pass, as multiples of
# hidden / intermediate width x activation bytes. Counted from the ops of a Llama decoder
# layer in transformers `models/llama/modeling_llama.py` (2 RMSNorms in fp32 inside, rope on
# q and k, SiLU(gate) * up, 2 residual adds, SDPA input/output layout copies): about 24 reads
# or writes of a hidden-sized tensor and 5 of an intermediate-sized one.
HIDDEN_TRAFFIC = 24
INTERMEDIATE_TRAFFIC = 5
BACKWARD_TRAFFIC_RATIO = 2.0
"""Backward element-wise traffic relative to forward (gradients of each op's inputs)."""
LOSS_TRAFFIC_FP32 = 6
"""fp32 logits-sized passes of the unfused loss: `logits.float()`, log-softmax forward,
gather, softmax backward, grad cast (transformers `ForCausalLMLoss` + autograd)."""
EAGER_SCORE_BYTES = 20
"""Bytes moved per attention-score element in the forward of eager attention (transformers
`eager_attention_forward`: QK^T written in bf16, + causal mask (read/write), softmax in
fp32 (read bf16, write fp32), cast back to bf16 (read fp32, write bf16), read by P@V).
Flash / SDPA kernels keep scores on chip and move none of this."""
FUSED_LOSS_TRAFFIC = 1.5
"""Liger fused linear cross-entropy: logits are produced chunk by chunk and consumed at once."""


@dataclass(frozen=True)
class FlopsPerToken:
    """Floating-point operations per trained token, by pass. FLOPs (not FLOP/s)."""

    forward: float
    """Matmuls and attention of the forward pass, incl. the lm_head and adapters."""
    backward: float
    recompute: float
    """Extra forward of the decoder layers under gradient checkpointing (0 when off)."""
    attention_forward: float
    """The attention-score part of `forward` (grows with the sequence length)."""
    model_flops: float
    """The textbook count used for MFU: 6N (full) or 4N (LoRA) + attention, no recompute."""

    def total(self) -> float:
        return self.forward + self.backward + self.recompute


@dataclass(frozen=True)
class Throughput:
    """Estimated speed of one training configuration on one GPU."""

    tokens_per_second: float | None
    """Trained tokens per second per GPU (None when the GPU's rates are unknown)."""
    micro_batch_seconds: float | None
    optimizer_step_seconds: float | None
    """Wall time of one optimizer step (grad_accum micro-batches + the update)."""
    flops: FlopsPerToken
    mfu: float | None
    """Model FLOPs utilisation: model_flops x tokens/s / peak."""
    bound: str
    """What limits the micro-batch: `compute`, `memory`, `host` or (several GPUs) `communication`."""
    parts: dict[str, float] = field(default_factory=dict)
    """Seconds per micro-batch by item (matmul, attention, elementwise, loss, dequant, host)."""


def _targets(spec: ModelSpec, setup: TrainSetup):
    if setup.method == "full":
        return ()
    return resolve_lora_targets(spec, setup.lora_targets)


@dataclass(frozen=True)
class _SpecSums:
    linear_flops: float  # forward matmul FLOPs per token of the decoder layers
    linear_params: int  # frozen decoder matmul weights (all experts)
    quantizable_params: int  # of which bitsandbytes quantizes (nn.Linear only)
    modules: int  # linear modules in all layers
    expert_flops: float = 0.0  # of linear_flops, the routed experts' share
    expert_token_share: float = 1.0  # tokens one expert's GEMM sees / tokens in the batch (k / E)
    mlp_flops: float = 0.0  # of linear_flops, the dense MLPs' share (what a tiled MLP recomputes)
    mlp_quantizable: int = 0  # of quantizable_params, the dense MLPs'
    mlp_modules: int = 0  # dense MLP linear modules in all layers


@dataclass(frozen=True)
class _TargetSums:
    params_per_rank: int  # trainable LoRA parameters per unit of rank (all instances)
    in_out: int  # sum of (in + out) x rank factor over the instances one token passes through
    modules: int  # adapted modules
    traffic: int  # element-wise bytes per token of the LoRA branches (forward)
    mlp_in_out: int = 0  # of in_out, the dense MLP modules'
    mlp_modules: int = 0  # of modules, the dense MLP ones
    mlp_traffic: int = 0  # of traffic, the dense MLP ones'


# Specs are long-lived (the catalog caches them): keep per-spec sums keyed by identity.
_SPEC_CACHE: dict[int, tuple[ModelSpec, _SpecSums]] = {}
_TARGET_CACHE: dict[tuple, tuple[ModelSpec, _TargetSums]] = {}


def _spec_sums(spec: ModelSpec) -> _SpecSums:
    hit = _SPEC_CACHE.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    flops = expert = mlp = 0.0
    share = 1.0
    params = quant = modules = mlp_quant = mlp_modules = 0
    for layer in spec.layers:
        dense = not any(getattr(m, "kind", "linear") == "expert" for m in layer)
        for m in layer:
            is_expert = getattr(m, "kind", "linear") == "expert"
            n = m.active if is_expert else m.count
            flops += 2.0 * m.in_features * m.out_features * n
            if is_expert:
                expert += 2.0 * m.in_features * m.out_features * n
                share = m.active / m.count
            p = m.in_features * m.out_features * m.count
            params += p
            quantizable = not hasattr(m, "quantizable") or m.quantizable()
            if quantizable:
                quant += p
            modules += 1
            if dense and _dense_mlp(m):
                mlp += 2.0 * m.in_features * m.out_features * n
                mlp_quant += p if quantizable else 0
                mlp_modules += 1
    sums = _SpecSums(flops, params, quant, modules, expert, share, mlp, mlp_quant, mlp_modules)
    if len(_SPEC_CACHE) > 256:
        _SPEC_CACHE.clear()
    _SPEC_CACHE[id(spec)] = (spec, sums)
    return sums


def _target_sums(spec: ModelSpec, setup: TrainSetup) -> _TargetSums:
    if setup.method == "full":
        return _TargetSums(0, 0, 0, 0)
    key = (id(spec), setup.lora_targets)
    hit = _TARGET_CACHE.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    per_rank = in_out = modules = traffic = mlp_io = mlp_mod = mlp_tr = 0
    for layer in _targets(spec, setup):
        dense = not any(getattr(m, "kind", "linear") == "expert" for m in layer)
        for m in layer:
            factor = getattr(m, "lora_rank_factor", 1)
            # a token passes through `active` routed experts, through every other instance
            n = m.active if getattr(m, "kind", "linear") == "expert" else m.count
            per_rank += factor * (m.in_features + m.out_features) * m.count
            in_out += factor * (m.in_features + m.out_features) * n
            modules += 1
            # peft LoRA: dropout on an fp32 copy of the input, A/B outputs, scaled add
            traffic += (3 * 4 * m.in_features + 2 * 2 * m.out_features) * n
            if dense and _dense_mlp(m):
                mlp_io += factor * (m.in_features + m.out_features) * n
                mlp_mod += 1
                mlp_tr += (3 * 4 * m.in_features + 2 * 2 * m.out_features) * n
    sums = _TargetSums(per_rank, in_out, modules, traffic, mlp_io, mlp_mod, mlp_tr)
    if len(_TARGET_CACHE) > 1024:
        _TARGET_CACHE.clear()
    _TARGET_CACHE[key] = (spec, sums)
    return sums


_ATTN_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")


def _dense_mlp(m) -> bool:
    """A linear module of an MLP (what a tiled MLP shards, in layers without experts): not
    attention, not an expert."""
    return getattr(m, "kind", "linear") != "expert" and m.name not in _ATTN_NAMES


def _uses_eager(spec: ModelSpec, setup: TrainSetup) -> bool:
    # transformers refuses SDPA/flash for Gemma-2's attention soft-capping and runs eager.
    return setup.attn == "eager" or spec.attn_logit_softcapping is not None


def _attended(spec: ModelSpec, layer_index: int, seq: int, eager: bool) -> float:
    """Average keys a query is multiplied with in one layer (causal; sliding windows)."""
    layer_types = getattr(spec, "layer_types", ()) or ()
    window = spec.sliding_window
    sliding = (
        window is not None
        and layer_index < len(layer_types)
        and layer_types[layer_index] == "sliding_attention"
    )
    if eager:
        return float(seq)  # the full s x s square is computed, then masked
    if sliding and window is not None and seq > window:
        # tokens past the window attend to `window` keys, the first `window` to i/2 on average
        return window - window * window / (2.0 * seq)
    return (seq + 1) / 2.0


def flops_per_token(spec: ModelSpec, setup: TrainSetup) -> FlopsPerToken:
    """FLOPs per trained token for `setup` (see the module docstring for the sources)."""
    linear = _spec_sums(spec).linear_flops
    head = 2.0 * spec.vocab_size * spec.hidden_size  # lm_head (tied or not, it is a matmul)
    eager = _uses_eager(spec, setup)
    attn = 0.0
    width = spec.num_heads * spec.head_dim
    for i in range(spec.num_layers):
        attn += 4.0 * _attended(spec, i, setup.seq_len, eager) * width
    adapter = 2.0 * setup.lora_rank * _target_sums(spec, setup).in_out
    attn_bwd = (2.0 if eager else 2.5) * attn
    if setup.method == "full":
        forward = linear + head + attn
        backward = 2.0 * (linear + head) + attn_bwd
        model = 3.0 * (linear + head) + 3.0 * attn
    else:
        forward = linear + head + attn + adapter
        backward = (linear + head) + attn_bwd + 2.0 * adapter
        model = 2.0 * (linear + head) + 3.0 * attn + 3.0 * adapter
    checkpointing = setup.grad_checkpointing or setup.offload_activations  # offloading implies it
    recompute = (linear + attn + adapter) if checkpointing else 0.0
    if setup.tiled_mlp:
        # the tiled MLP's backward reruns the dense MLPs' forward (with their adapters)
        recompute += _spec_sums(spec).mlp_flops + 2.0 * setup.lora_rank * _target_sums(spec, setup).mlp_in_out
    return FlopsPerToken(forward=forward, backward=backward, recompute=recompute,
                         attention_forward=attn, model_flops=model)


def _act_bytes(setup: TrainSetup) -> int:
    return 4 if setup.compute_dtype == "float32" else 2


def gemm_efficiency(tokens_per_matmul: int) -> float:
    """Fraction of peak a GEMM with `tokens_per_matmul` rows reaches (saturating curve)."""
    return E_MM_MAX * tokens_per_matmul / (tokens_per_matmul + T_HALF)


def estimate_throughput(spec: ModelSpec, setup: TrainSetup, gpu: GPU, *, nodes: int = 1,
                        inter_node_gbs: float | None = None, cpu_offload: bool | None = None) -> Throughput:
    """Tokens per second of `setup` on `setup.num_gpus` x `gpu` (rates from the catalog entry).

    Returns `tokens_per_second=None` when the card's TFLOP/s or bandwidth is unknown.
    Assumes packed (or fixed-length) rows: every token of `micro_batch x seq_len` is trained.
    With several GPUs (`setup.strategy` ddp or fsdp) `tokens_per_second` is the total over
    all GPUs and `parts["communication"]` the exposed communication time per micro-batch
    (see `communication_seconds`); `nodes` machines share the GPUs, linked at
    `inter_node_gbs` (GB/s per direction; default 100 Gb/s Ethernet).
    """
    if cpu_offload is None:
        cpu_offload = bool(getattr(setup, "cpu_offload", False))
    single = _estimate_one(spec, setup, gpu)
    if (setup.num_gpus <= 1 and setup.strategy != "fsdp") or single.tokens_per_second is None:
        return single
    return _with_communication(spec, setup, gpu, single, nodes, inter_node_gbs, cpu_offload)


# Communication (ring algorithms; NCCL docs "Performance: algorithm bandwidth vs bus
# bandwidth", nccl-tests PERFORMANCE.md): for S bytes over N ranks at bus bandwidth B,
# all-reduce moves 2 (N-1)/N x S / B, all-gather and reduce-scatter (N-1)/N x S / B each.
NCCL_EFFICIENCY = 0.80
"""Fraction of the per-direction link bandwidth NCCL reaches as bus bandwidth (nccl-tests
busbw on NVLink A100/H100 boxes and PCIe Gen4 pairs: 75-85%)."""
DDP_OVERLAP = 0.8
"""Share of the backward of the last micro-batch that DDP's bucketed all-reduce can hide
behind (buckets fire as gradients become ready; the last bucket is always exposed)."""
FSDP_OVERLAP = 0.9
"""Share of compute that FSDP's prefetched all-gathers hide behind (the first unit's gather
and the last reduce-scatter are exposed)."""
HOST_LINK_GBS = 25.0
"""Host<->GPU copy rate for FSDP CPU offload (PCIe Gen4 x16 pinned copies, ~25 GB/s)."""
CPU_ADAM_GBS = 10.0
"""Bytes/s (in GB/s) a CPU AdamW step streams through (params, grads, two fp32 states)."""


def link_bandwidth(gpu: GPU, num_gpus: int, nodes: int = 1, inter_node_gbs: float | None = None) -> float | None:
    """Bus bandwidth in bytes/s of the slowest link a ring over `num_gpus` crosses."""
    intra = interconnect_gbs(gpu)
    if intra is None:
        return None
    bw = intra
    if nodes > 1:
        bw = min(bw, inter_node_gbs or DEFAULT_INTER_NODE_GBS)
    return bw * 1e9 * NCCL_EFFICIENCY


def communication_seconds(spec: ModelSpec, setup: TrainSetup, gpu: GPU, *, nodes: int = 1,
                          inter_node_gbs: float | None = None) -> dict[str, float] | None:
    """Seconds of collective traffic, unhidden, per micro-batch and per optimizer step.

    DDP: one all-reduce of the trainable gradients per optimizer step (accelerate skips the
    sync on accumulation micro-batches: `no_sync`). FSDP: the frozen and trainable weights
    are all-gathered in the forward and again in the backward (resharded after forward),
    in their stored size (half a byte per 4-bit weight), and the trainable gradients are
    reduce-scattered every micro-batch. Returns None when the link is unknown."""
    n = setup.num_gpus
    bw = link_bandwidth(gpu, n, nodes, inter_node_gbs)
    if bw is None:
        return None
    ring = (n - 1) / n if n > 1 else 0.0
    trainable = trainable_parameters(spec, setup)
    grad_bytes = 2 if setup.method == "full" else 4  # full: 16-bit weights; LoRA: fp32 adapters
    if setup.strategy == "ddp":
        return {"per_micro_batch": 0.0, "per_step": 2 * ring * trainable * grad_bytes / bw}
    w = 2 if setup.compute_dtype != "float32" else 4
    quant = _spec_sums(spec).quantizable_params if setup.method == "qlora" else 0
    frozen = spec.parameter_count() - (trainable if setup.method == "full" else 0)
    weight_bytes = (frozen - quant) * w + quant * 0.5 + (trainable * w if setup.method == "full" else trainable * 2)
    gathers = 2 * ring * weight_bytes / bw
    scatter = ring * trainable * grad_bytes / bw
    return {"per_micro_batch": gathers + scatter, "per_step": 0.0}


def _with_communication(spec, setup, gpu, single: Throughput, nodes, inter_node_gbs, cpu_offload) -> Throughput:
    n = setup.num_gpus
    t_micro, t_step, tflops = single.micro_batch_seconds, single.optimizer_step_seconds, gpu.bf16_tflops
    if t_micro is None or t_step is None or tflops is None:
        return single  # the card's rates are unknown: there is no time to add communication to
    comm = communication_seconds(spec, setup, gpu, nodes=nodes, inter_node_gbs=inter_node_gbs)
    t_opt = t_step - t_micro * setup.grad_accum
    fl = single.flops
    exposed_micro = exposed_step = 0.0
    if comm is not None:
        if setup.strategy == "ddp":
            backward = t_micro * fl.backward / max(fl.total(), 1.0)
            exposed_step = max(comm["per_step"] - DDP_OVERLAP * backward, comm["per_step"] / max(4, spec.num_layers))
        else:
            c = comm["per_micro_batch"]
            exposed_micro = max(c - FSDP_OVERLAP * t_micro, c / max(1, spec.num_layers))
    if cpu_offload:
        # sharded weights copied up before each gather (forward and backward), gradients down;
        # the optimizer steps on the CPU over this rank's shard
        trainable = trainable_parameters(spec, setup)
        shard = (spec.parameter_count() * 2) / n
        exposed_micro += 2 * shard / (HOST_LINK_GBS * 1e9)
        t_opt = trainable / n * (2 + 4 + 8 + 4) / (CPU_ADAM_GBS * 1e9)
    t_micro_total = t_micro + exposed_micro
    step = t_micro_total * setup.grad_accum + t_opt + exposed_step
    tokens = setup.micro_batch * setup.seq_len
    per_gpu = tokens * setup.grad_accum / step
    peak = tflops * 1e12
    parts = dict(single.parts)
    parts["communication"] = exposed_micro + exposed_step / max(1, setup.grad_accum)
    bound = "communication" if parts["communication"] > 0.5 * t_micro else single.bound
    return Throughput(tokens_per_second=per_gpu * n, micro_batch_seconds=t_micro_total,
                      optimizer_step_seconds=step, flops=fl, mfu=fl.model_flops * per_gpu / peak, bound=bound,
                      parts=parts)


def _estimate_one(spec: ModelSpec, setup: TrainSetup, gpu: GPU) -> Throughput:
    """One GPU's throughput (the single-GPU model)."""
    fl = flops_per_token(spec, setup)
    if not gpu.bf16_tflops or not gpu.bandwidth_gbs:
        return Throughput(None, None, None, fl, None, "unknown")
    peak = gpu.bf16_tflops * 1e12
    bw = gpu.bandwidth_gbs * 1e9
    tokens = setup.micro_batch * setup.seq_len
    e_mm = gemm_efficiency(tokens)
    act = _act_bytes(setup)

    checkpointing = setup.grad_checkpointing or setup.offload_activations  # offloading implies it
    passes = 2 + (1 if checkpointing else 0)  # forward, backward, recompute
    sums = _spec_sums(spec)
    tsums = _target_sums(spec, setup)
    frozen_linear_params = sums.linear_params
    quant_params = sums.quantizable_params if setup.method == "qlora" else 0
    head_params = spec.vocab_size * spec.hidden_size

    # Matmuls: compute-bound above a few hundred tokens, weight-read-bound below (roofline).
    attn_flops = fl.attention_forward * (1 + (2.0 if _uses_eager(spec, setup) else 2.5)
                                         + (1 if checkpointing else 0))
    mm_flops = fl.total() - attn_flops
    weight_bytes = (frozen_linear_params + head_params) * 2 * passes
    # Routed experts (transformers' grouped_mm experts) multiply only the tokens routed to
    # each expert: their GEMMs see tokens x k / E rows and run at that size's efficiency.
    inv_e = 1.0 / e_mm
    if sums.expert_flops:
        g = sums.expert_flops / (sums.linear_flops + 2.0 * spec.vocab_size * spec.hidden_size)
        e_expert = gemm_efficiency(max(1, int(tokens * sums.expert_token_share)))
        inv_e = (1.0 - g) / e_mm + g / e_expert
    t_mm = max(mm_flops * tokens * inv_e / peak, weight_bytes / (bw * E_BW))
    t_attn = attn_flops * tokens / (peak * e_mm)

    # Element-wise traffic of the decoder layers (forward, backward, recompute).
    inter = spec.moe_intermediate_size * spec.experts_per_token if getattr(spec, "moe_intermediate_size", 0) else spec.intermediate_size
    per_layer = (HIDDEN_TRAFFIC * spec.hidden_size + INTERMEDIATE_TRAFFIC * inter) * act
    lora_bytes = tsums.traffic
    modules = tsums.modules
    if _uses_eager(spec, setup):
        per_layer += EAGER_SCORE_BYTES * spec.num_heads * setup.seq_len  # the s x s square, per token
    fwd_bytes = spec.num_layers * per_layer + lora_bytes
    ew_bytes = fwd_bytes * (1 + BACKWARD_TRAFFIC_RATIO + (1 if checkpointing else 0))
    t_ew = ew_bytes * tokens / (bw * E_BW)
    tiled = setup.tiled_mlp and sums.mlp_flops > 0
    if tiled:
        # one more forward of the MLPs' element-wise ops (act, product) and their LoRA branches
        t_ew += (spec.num_layers * INTERMEDIATE_TRAFFIC * spec.intermediate_size * act + tsums.mlp_traffic) \
            * tokens / (bw * E_BW)
    loss_passes = FUSED_LOSS_TRAFFIC if setup.fused_ce else LOSS_TRAFFIC_FP32
    t_loss = spec.vocab_size * 4 * loss_passes * tokens / (bw * E_BW)

    # QLoRA dequantization: read 4-bit + absmax, write the compute-dtype weight, every pass.
    shards = 1
    mlp_quant = sums.mlp_quantizable if (tiled and setup.method == "qlora") else 0
    if tiled:
        shards = tiled_mlp_shards(setup, spec.hidden_size)[0]
    # a tiled MLP dequantizes its 4-bit weights once per shard and pass, and once more for the
    # backward's recomputation
    dequant_calls = (quant_params - mlp_quant) * passes + mlp_quant * shards * (passes + 1)
    t_dequant = dequant_calls * (0.5 + 0.07 + act) / (bw * E_DEQUANT) if quant_params else 0.0

    t_gpu = t_mm + t_attn + t_ew + t_loss + t_dequant
    base_modules = sums.modules + 4 * spec.num_layers  # + norms, attention, activation
    t_host = HOST_SECONDS_PER_MODULE_CALL * (base_modules + 3 * modules) * (passes / 2.0)
    if tiled:
        # every MLP module (and its adapter's three calls) runs once per shard, one pass more
        mlp_calls = sums.mlp_modules + 3 * tsums.mlp_modules + spec.num_layers
        t_host += HOST_SECONDS_PER_MODULE_CALL * mlp_calls * (shards * (passes + 1) - passes) / 2.0
    if chunked_norm_applies(spec, setup):
        # tuneplan/training/long_context.py `ChunkedRMSNorm`: each of the 2 norms per layer and the
        # final one runs its ~6 forward ops and ~10 backward ops once per chunk (planner/memory.py
        # `norm_chunk_tokens`) instead of once; its backward re-reads the input in its own dtype
        # where transformers' reads its saved fp32 copy (no more bytes), so only the calls count
        norms = 2 * spec.num_layers + 1
        chunks = -(-tokens // norm_chunk_tokens(tokens, spec.hidden_size))
        t_host += HOST_SECONDS_PER_MODULE_CALL * norms * (chunks - 1) * (passes / 2.0)
    t_offload = 0.0
    if setup.offload_activations:
        link = host_link_gbs(gpu)
        if link:
            # each layer input (and the loss head's saved hidden rows) down in the forward, up in
            # the backward; the forward copies overlap the forward compute (side stream), the
            # backward ones do not (the compute stream waits on each)
            moved = (spec.num_layers + 1) * tokens * spec.hidden_size * act
            one_way = moved / (link * 1e9)
            forward = t_gpu * fl.forward / max(fl.total(), 1.0)
            t_offload = max(0.0, one_way - forward) + one_way
    t_embed = 0.0
    if embedding_offload_applies(spec, setup):
        link = host_link_gbs(gpu)
        if link:
            # tuneplan/training/long_context.py `HostEmbedding`: the token ids down and the looked-up
            # rows up, on the compute stream (nothing to hide them behind: the forward starts with them)
            t_embed = tokens * (8 + spec.hidden_size * act) / (link * 1e9)
    t_gpu += t_offload + t_embed
    t_micro = max(t_gpu, t_host)
    bound = "host" if t_host > t_gpu else ("memory" if (t_ew + t_loss + t_dequant) > t_mm + t_attn else "compute")

    # Optimizer step: read/write params, grads and states once per optimizer step.
    trainable = trainable_parameters(spec, setup)
    per_param = {"adamw": 16, "adamw-8bit": 8, "paged-adamw-8bit": 8, "paged-adamw-32bit": 16}.get(setup.optimizer, 16)
    master = 4 if setup.method != "full" else 2  # fp32 adapters vs 16-bit full weights
    t_opt = trainable * (per_param + 3 * master) / (bw * E_BW)
    step = t_micro * setup.grad_accum + t_opt
    tps = tokens * setup.grad_accum / step
    mfu = fl.model_flops * tps / peak
    return Throughput(
        tokens_per_second=tps, micro_batch_seconds=t_micro, optimizer_step_seconds=step,
        flops=fl, mfu=mfu, bound=bound,
        parts={"matmul": t_mm, "attention": t_attn, "elementwise": t_ew, "loss": t_loss,
               "dequant": t_dequant, "host": t_host, "offload": t_offload + t_embed},
    )


def trainable_parameters(spec: ModelSpec, setup: TrainSetup) -> int:
    """Trainable parameters: all of them (full) or the LoRA A and B matrices: r x (in + out)
    per adapted instance (x `lora_rank_factor` for fused expert tensors, as peft does)."""
    if setup.method == "full":
        return spec.parameter_count()
    return setup.lora_rank * _target_sums(spec, setup).params_per_rank


def training_seconds(tokens_per_second: float | None, dataset_tokens: int, epochs: float = 1.0) -> float | None:
    """Wall time to train `dataset_tokens x epochs` tokens at `tokens_per_second` (all GPUs)."""
    if not tokens_per_second or tokens_per_second <= 0:
        return None
    return dataset_tokens * epochs / tokens_per_second


def training_cost(seconds: float | None, price_per_hour: float | None, num_gpus: int = 1) -> float | None:
    """USD for `seconds` on `num_gpus` cards at `price_per_hour` each; None when unknown."""
    if seconds is None or price_per_hour is None:
        return None
    return seconds / 3600.0 * price_per_hour * num_gpus


@dataclass(frozen=True)
class CalibrationPoint:
    """A published throughput figure in our training stack's family (HF transformers + PEFT)."""

    row: str
    """Row id in `shared/data/measured.csv`."""
    source: str
    model: str
    """Catalog name of the model."""
    gpu: str
    setup: TrainSetup
    tokens_per_second: float
    """Per GPU, as published (or derived from the published time and token count)."""


CALIBRATION: tuple[CalibrationPoint, ...] = (
    # fsdp_qlora (Answer.AI) train.py: HF Llama + PEFT + bitsandbytes, 1024 samples x 2048
    # tokens, fixed length, "ddp" = no sharding (each GPU runs the whole model) on 2 x RTX 3090.
    # https://github.com/AnswerDotAI/fsdp_qlora (benchmarks in the README / blog table)
    CalibrationPoint("M112", "fsdp_qlora README, 2x3090 ddp, 875 s for 1024x2048 tokens", "llama-2-7b",
                     "rtx-3090", TrainSetup(method="qlora", lora_rank=64, micro_batch=8, seq_len=2048,
                                            grad_checkpointing=True), 1024 * 2048 / 875 / 2),
    CalibrationPoint("M113", "fsdp_qlora README, 2x3090 ddp, 881 s for 1024x2048 tokens", "llama-2-7b",
                     "rtx-3090", TrainSetup(method="lora", lora_rank=64, micro_batch=4, seq_len=2048,
                                            grad_checkpointing=True), 1024 * 2048 / 881 / 2),
    # LLaMA-Factory benchmark (HF + PEFT baseline rows), A100, Llama-2-7B, r=8 q/v (LLaMA-Factory's
    # default targets then), bs 4 x 1024 max length. Gradient checkpointing on: the 18 GB
    # published for 16-bit LoRA leaves no room for un-checkpointed activations. HF's default
    # attention in 2023 was eager; the same table gives 2954 tok/s with FlashAttention-2.
    # Unsloth README (2023-12) quoting the LLaMA-Factory wiki "Performance Comparison".
    # Caveat: Alpaca-style rows padded to the longest in the batch; published tokens/s likely
    # count real tokens, so these rows read low against a packed-token model.
    CalibrationPoint("M151", "LLaMA-Factory benchmark, HF LoRA 16-bit (eager attention)", "llama-2-7b", "a100-80gb",
                     TrainSetup(method="lora", lora_rank=8, lora_targets=("q_proj", "v_proj"), micro_batch=4,
                                seq_len=1024, grad_checkpointing=True, attn="eager"), 2392.0),
    CalibrationPoint("M151-FA2", "LLaMA-Factory benchmark, HF+FA2 LoRA 16-bit (M151 notes)", "llama-2-7b",
                     "a100-80gb", TrainSetup(method="lora", lora_rank=8, lora_targets=("q_proj", "v_proj"),
                                             micro_batch=4, seq_len=1024, grad_checkpointing=True, attn="flash"),
                     2954.0),
    CalibrationPoint("M152", "LLaMA-Factory benchmark, HF QLoRA 4-bit (eager attention)", "llama-2-7b", "a100-80gb",
                     TrainSetup(method="qlora", lora_rank=8, lora_targets=("q_proj", "v_proj"), micro_batch=4,
                                seq_len=1024, grad_checkpointing=True, attn="eager"), 2415.0),
)
"""Published throughput of HF/PEFT-style training (our stack's family). torchtune rows
(compiled, pure bf16) are faster and serve only as an upper bound in the tests."""
