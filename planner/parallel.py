"""Per-GPU memory of one training step on several GPUs: DDP or FSDP through accelerate.

`estimate_parallel_memory(spec, setup, gpu, ...)` predicts what ONE of `setup.num_gpus`
GPUs holds during the second optimizer step, for `setup.strategy`:

- `single` (one GPU): `planner.memory.estimate_memory` unchanged.
- `ddp`: a full replica per GPU (torch `DistributedDataParallel`, accelerate's MULTI_GPU).
  Everything of the single-GPU step, plus the reducer's gradient buckets: torch
  `nn/parallel/distributed.py` `Reducer` allocates flat buckets for every parameter that
  requires grad, and with `gradient_as_bucket_view=False` (the DDP and accelerate default)
  they are a second copy of the gradients, alive for the whole run. Memory does not scale
  down with more GPUs; throughput scales up.
- `fsdp`: accelerate's FULL_SHARD with `TRANSFORMER_BASED_WRAP` (one FSDP unit per decoder
  layer; the Trainer adds peft's `fsdp_auto_wrap_policy`, so LoRA modules are their own units
  and need not share a dtype with the frozen weights; the root unit holds the embeddings,
  final norm and `lm_head`). Per GPU:
  * flat parameters (4-bit packed weights stored as the compute dtype, i.e. our
    `bnb_4bit_quant_storage = compute dtype`; 16-bit weights; adapters), gradients of the
    trainable parameters and optimizer states are split into `num_gpus` shards (torch
    `distributed/fsdp/_flat_param.py`: one flat tensor per unit, padded to a multiple of the
    world size);
  * the 4-bit quantization constants are NOT parameters (bitsandbytes keeps them in
    `Params4bit.quant_state`), so FSDP does not shard them: every GPU keeps all of them;
  * transient: the unsharded parameters of the units being computed. The root unit is all
    gathered for the whole forward and backward (FSDP does not reshard the root after its
    forward: it is needed at once for the backward), plus two decoder-layer units: the one
    computing and the one prefetched (`BACKWARD_PRE` / forward prefetch; `limit_all_gathers`
    caps it at two). With mixed precision the trainable adapters are gathered in the compute
    dtype. In the backward one unit's unsharded gradients exist until its reduce-scatter;
  * activations are those of the per-GPU micro-batch, as on one GPU.
  * `cpu_offload=True` (FSDP `CPUOffload(offload_params=True)`): sharded parameters,
    gradients and the optimizer (states and step) live in host memory; the GPU holds the
    gathered units, the activations and the replicated quantization constants. The host
    memory needed per process is in `details["host_offload_bytes"]`.
- Both: NCCL's own buffers (outside torch's allocator, so only in `device_bytes`).

Nodes: FULL_SHARD shards across every GPU of every node, so per-GPU memory depends on the
world size only; the throughput model (`planner.throughput`) charges the slower network.

Pure standard library; a few estimates per call, well under 1 ms each.
"""

from __future__ import annotations

from dataclasses import replace

from planner.memory import ALLOC_FRAGMENTATION, estimate_memory
from planner.setup import COMPONENTS, STRATEGIES, TUNEPLAN_STACK, CalibrationProfile, MemoryEstimate, TrainSetup

MiB = 1024**2

NCCL_BUFFER_BYTES = 2 * 32 * 4 * MiB
"""NCCL communicator buffers per process, outside torch's allocator: NCCL_BUFFSIZE (4 MiB,
the default) per channel for send and receive, up to 32 channels on NVLink systems (NCCL
docs, Environment Variables: NCCL_BUFFSIZE, NCCL_MAX_NCHANNELS). A ceiling; PCIe boxes open
fewer channels. Not calibrated separately (the published rows fold it into nvidia-smi)."""

FSDP_PREFETCHED_UNITS = 2
"""Decoder-layer units unsharded at once: the one computing and the prefetched one."""


def _dtype_bytes(name: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4}[name]


def _layer_unit_bytes(spec, setup: TrainSetup, adapter_gather_bytes: int) -> tuple[int, int]:
    """(bytes of the largest decoder layer's unsharded parameters, its trainable elements).

    Weights as FSDP all-gathers them: 4-bit packed weights at half a byte per element (the
    packed uint8 pairs viewed as the storage dtype), 16-bit weights at 2 bytes, norms; the
    layer's LoRA A/B in the gather dtype (or, for full fine-tuning, everything trainable)."""
    w = _dtype_bytes(setup.compute_dtype)
    r = setup.lora_rank
    try:
        from planner.spec import resolve_lora_targets

        lora_layers = resolve_lora_targets(spec, setup.lora_targets) if setup.method != "full" else None
    except ValueError:
        lora_layers = None
    best = (0, 0)
    norms = spec.norm_params_per_layer
    for i, layer in enumerate(spec.layers):
        weights = norms * w
        trainable = 0
        for m in layer:
            n = m.in_features * m.out_features * m.count
            if setup.method == "qlora" and m.quantizable():
                weights += (n + 1) // 2
            else:
                weights += n * w
            if setup.method == "full":
                trainable += n
        if setup.method == "full":
            trainable += norms
            total = weights
        else:
            if lora_layers is not None and i < len(lora_layers):
                for m in lora_layers[i]:
                    rr = r * getattr(m, "lora_rank_factor", 1)
                    trainable += rr * (m.in_features + m.out_features) * m.count
            total = weights + trainable * adapter_gather_bytes
        if total > best[0]:
            best = (total, trainable)
    return best


def estimate_parallel_memory(spec, setup: TrainSetup, gpu=None, *, cpu_offload: bool | None = None,
                             device: str = "cuda", padded_rows: bool = True,
                             profile: CalibrationProfile = TUNEPLAN_STACK) -> MemoryEstimate:
    """Memory of ONE of `setup.num_gpus` GPUs during the second optimizer step, in bytes.

    `setup.strategy`: `single`, `ddp` or `fsdp` (see the module docstring). `cpu_offload`
    applies to FSDP only (None: `setup.cpu_offload`). The micro-batch is per GPU (the effective batch is
    micro_batch x grad_accum x num_gpus). Components and totals mean what they mean for
    `estimate_memory` (`torch_peak_bytes` = that GPU's `max_memory_allocated`,
    `device_bytes` = its nvidia-smi reading). `profile`: the training stack, as for
    `estimate_memory`."""
    n = setup.num_gpus
    if cpu_offload is None:
        cpu_offload = bool(getattr(setup, "cpu_offload", False))
    if setup.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)} (got {setup.strategy!r})")
    if n <= 0:
        raise ValueError(f"num_gpus must be > 0 (got {n})")
    if setup.strategy == "single" and n > 1:
        raise ValueError(f"strategy single runs on one GPU (got num_gpus {n}): use ddp or fsdp")
    if cpu_offload and setup.strategy != "fsdp":
        raise ValueError("cpu_offload needs strategy fsdp (DDP keeps a full replica on every GPU)")
    one = estimate_memory(spec, replace(setup, num_gpus=1, strategy="single", cpu_offload=False), gpu, device=device,
                          padded_rows=padded_rows, profile=profile)
    if setup.strategy == "single":
        return one
    c = dict(one.components)
    d = dict(one.details)
    notes = list(one.notes)
    paged = d.get("optimizer_paged_unified_memory", 0)
    opt_torch = c["optimizer_states"] - paged
    nccl = NCCL_BUFFER_BYTES if device == "cuda" else 0
    d["nccl_buffers"] = nccl

    if setup.strategy == "ddp":
        buckets = c["adapter_weights"]  # one bucket element per trainable element, grad dtype = param dtype
        d["ddp_gradient_buckets"] = buckets
        c["gradients"] += buckets
        c["runtime_overhead"] += nccl
        torch_peak = one.torch_peak_bytes + buckets
        device_bytes = one.device_bytes + buckets + nccl
        notes.append(f"DDP keeps a full replica on each of the {n} GPUs (memory per GPU does not shrink) "
                     "plus a copy of the gradients in its all-reduce buckets.")
        return MemoryEstimate(components=c, torch_peak_bytes=int(torch_peak), device_bytes=int(device_bytes),
                              details=d, notes=tuple(notes))

    # -- FSDP ----------------------------------------------------------------------------------
    consts = d.get("weights_4bit_constants", 0) if setup.method == "qlora" else 0
    packed = c["quantized_weights"] - consts
    unquant = c["unquantized_weights"]
    adapters = c["adapter_weights"]
    grads_peak = c["gradients"]
    static_one = c["quantized_weights"] + unquant + adapters + opt_torch
    shard = lambda x: -(-x // n)  # noqa: E731  (flat params are padded to a multiple of n)
    if cpu_offload:
        on_gpu_static = consts
        host = shard(packed) + shard(unquant) + shard(adapters) + shard(opt_torch + paged) + shard(adapters)
        d["host_offload_bytes"] = host
        sharded_grads = 0
        paged_gpu = 0
        notes.append(f"FSDP CPU offload: about {host / 1024**3:.1f} GiB of sharded weights, gradients and optimizer "
                     "states per process live in host memory; the optimizer steps on the CPU.")
    else:
        on_gpu_static = shard(packed) + consts + shard(unquant) + shard(adapters) + shard(opt_torch)
        sharded_grads = shard(grads_peak)
        paged_gpu = shard(paged)
    w = _dtype_bytes(setup.compute_dtype)
    trainable = d.get("trainable_params") or 0
    grad_bytes = adapters // trainable if trainable else w  # gradients in the parameter dtype
    # accelerate's FSDP mixed precision gathers parameters in the compute dtype (param_dtype);
    # without autocast (pure 16-bit stacks) they are gathered as stored
    gather_bytes = 2 if (profile.autocast and w == 2) else grad_bytes
    layer_unit, layer_trainable = _layer_unit_bytes(spec, setup, gather_bytes if setup.method != "full" else 0)
    root = (spec.embedding_params() + spec.lm_head_params() + spec.final_norm_params) * w
    gathered = root + FSDP_PREFETCHED_UNITS * layer_unit
    unit_grads = layer_trainable * grad_bytes  # one unit's unsharded grads before its reduce-scatter
    if setup.method == "full":
        unit_grads = max(unit_grads, (spec.embedding_params() + spec.lm_head_params()) * w)
    d.update(fsdp_sharded_static=on_gpu_static, fsdp_gathered_root=root,
             fsdp_gathered_layers=FSDP_PREFETCHED_UNITS * layer_unit, fsdp_unit_gradients=unit_grads,
             replicated_quant_constants=consts, fsdp_world_size=n)
    torch_peak = (one.torch_peak_bytes - static_one - grads_peak) + on_gpu_static + sharded_grads \
        + gathered + unit_grads
    transient = c["transient_peak"] + gathered + unit_grads
    # FSDP all-gathers into blocks allocated on its own unshard stream (torch
    # distributed/fsdp/_runtime_utils.py `_unshard` on `state._unshard_stream`; FSDP2 uses
    # separate all-gather streams too). The caching allocator keeps a pool per stream, so
    # the gathered decoder-layer buffers stay reserved in a pool the compute stream cannot
    # reuse: reserved exceeds allocated by about those buffers (the published fsdp_qlora
    # allocated/reserved pairs show it: tests/planner/test_parallel.py).
    stream_pool = FSDP_PREFETCHED_UNITS * layer_unit
    d["fsdp_unshard_stream_pool"] = stream_pool
    allocator = c["allocator_overhead"] + int(ALLOC_FRAGMENTATION * (gathered + unit_grads)) + stream_pool
    runtime = c["runtime_overhead"] + nccl
    comps = {
        "runtime_overhead": runtime,
        "quantized_weights": (0 if cpu_offload else shard(packed)) + consts,
        "unquantized_weights": 0 if cpu_offload else shard(unquant),
        "adapter_weights": 0 if cpu_offload else shard(adapters),
        "gradients": sharded_grads,
        "optimizer_states": 0 if cpu_offload else shard(opt_torch) + paged_gpu,
        "saved_activations": c["saved_activations"],
        "transient_peak": transient,
        "allocator_overhead": allocator,
    }
    assert tuple(comps) == COMPONENTS
    device_bytes = torch_peak + allocator + runtime + paged_gpu
    notes.append(f"FSDP shards weights, gradients and optimizer states over {n} GPUs; each GPU also holds the "
                 f"unsharded embeddings/lm_head ({root / 1024**3:.1f} GiB) and two decoder layers "
                 f"({FSDP_PREFETCHED_UNITS * layer_unit / 1024**3:.1f} GiB) while they compute.")
    if consts:
        notes.append(f"4-bit quantization constants ({consts / 1024**3:.2f} GiB) are not parameters: FSDP keeps a full "
                     "copy on every GPU.")
    return MemoryEstimate(components=comps, torch_peak_bytes=int(torch_peak), device_bytes=int(device_bytes),
                          details=d, notes=tuple(notes))


def host_memory_bytes(estimate: MemoryEstimate) -> int:
    """Host (CPU) memory one process needs for FSDP CPU offload, in bytes (0 without)."""
    return int(estimate.details.get("host_offload_bytes", 0))
