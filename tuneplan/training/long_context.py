"""The long-context path of the training step: activation offloading, the tiled MLP, the
chunked RMSNorm and the host-resident input embedding.

Each is switched by the setup (`TrainSetup.offload_activations`, `TrainSetup.tiled_mlp`,
`TrainSetup.chunked_norm`, `TrainSetup.offload_embedding`) and changes nothing when off. The planner models exactly what is written here (planner/memory.py);
docs/long-context.md describes it for users.

**Activation offloading** (`offload_activations`, implies `grad_checkpointing`: `effective_setup`). trl's own
`activation_offloading` (trl/models/activation_offloading.py, from torchtune): a
`saved_tensors_hooks` context around the whole training step (`SFTTrainer.training_step`)
whose pack hook copies every saved tensor of at least 1 KiB that is not a parameter into host
RAM and whose unpack hook brings it back in the backward. Under non-reentrant checkpointing
the only tensors saved outside the checkpointed regions are each decoder layer's input (torch
utils/checkpoint.py `_NoopSaveInputs` saves the checkpointed function's tensor arguments
before the region's own hooks are pushed), the final norm's input and the loss head's input,
so those are what leave the card; the recomputation inside each layer saves through
checkpoint's own hook (the innermost hooks win) and stays on the card.

- CUDA: `SFTConfig(activation_offloading=True)`; trl builds the manager itself with pinned
  host buffers and a second CUDA stream (asynchronous copies; up to `max_fwd_stash_size` = 5
  packed tensors stay on the card until their copy is done).
- CPU: trl's manager refuses a machine without an accelerator (`torch.accelerator.
  current_accelerator()` is None), so `offload_manager` builds the same manager for the CPU
  device: single stream, unpinned. Its pack hook copies each saved tensor into a new host
  tensor and unpack returns that copy, so on the CPU it has `save_on_cpu` semantics: the same
  code path, an extra copy in the same RAM, nothing saved. The point is that a CPU run goes
  through the same hooks as a CUDA run (tests compare its losses with a run without them).

**Tiled MLP** (`tiled_mlp`). Each decoder layer's MLP (`model.layers[i].mlp`) runs through
`TiledMLP`: the forward splits the MLP input along the sequence into `mlp_shards(...)` shards
and runs the MLP on each under `no_grad`, writing into one output tensor; it saves only the
input. The backward recomputes each shard with gradients on and back-propagates it at once,
so the MLP's intermediate tensors (gate, up, activation, their LoRA and dropout tensors) exist
for one shard at a time, in the forward and in the backward. This is the design of Arctic
Long Sequence Training (Bekman et al., 2025, arXiv:2506.13996, section "TiledMLP") and of
DeepSpeed's `TiledMLP` and `liger_kernel.ops.tiled_mlp`; the code here is our own. The RNG
state and autocast state of the forward are restored for the recomputation (LoRA dropout
draws the same masks). Cost: the MLP forward runs once more per step (and once more again
under checkpointing, whose recomputation reruns the layer).

**Chunked RMSNorm** (`chunked_norm`). transformers' `LlamaRMSNorm` computes in fp32 through
autograd ops, which save an fp32 copy of the input and whose backward holds four fp32
`tokens x hidden` tensors at once. `ChunkedRMSNorm` is an autograd function with the same
maths (RMSNorm, Zhang & Sennrich 2019, arXiv:1910.07467: y = x / sqrt(mean(x^2) + eps), times
the weight; the casts of transformers' version: fp32 compute, cast to the input dtype before
the weight) that saves only the input, in its own dtype, and the fp32 reciprocal RMS of each
row (`rstd`), and runs forward and backward chunk by chunk along the flattened positions, so
its fp32 temporaries exist for one chunk: `planner.memory.norm_chunk_tokens` positions (the
rule the planner counts). The backward is the analytic gradient, per row:
`dx = rstd * g - x * rstd^3 * sum(g * x) / hidden` with `g = (grad_out * weight)` in fp32 and
`dweight = sum over rows(grad_out * y)`. It replaces the forward of the decoder layers'
`input_layernorm` / `post_attention_layernorm` and of the final `norm` whose class runs exactly
LlamaRMSNorm's forward (`is_llama_rmsnorm`: the same bytecode; Llama, Mistral, Mixtral, Qwen2/3,
Phi-3, Granite). Gemma's `(1 + weight)` norms and any other variant are left alone. Code our
own (liger_kernel's `LigerRMSNorm` does the same in a Triton kernel, which needs a GPU).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from typing import Any

import torch

from planner.memory import norm_chunk_tokens

HOST_DEVICE = "cpu"
"""Where `apply_host_embedding` keeps the table: host RAM (the CUDA-semantics trace stands it for
by its own host device, verification/cuda_semantics.py `embed_host`)."""

# The MLP of a decoder layer: `...layers.<i>.mlp` (Llama, Mistral, Qwen, Gemma, Phi-3, Mixtral's
# `block_sparse_moe` is not an `mlp` and is left alone).
_MLP_NAME = re.compile(r"(^|\.)layers\.\d+\.mlp$")


def mlp_shards(tokens: int, hidden_size: int) -> int:
    """Shards of a tiled MLP over `tokens` positions of a row (the sequence dimension of its
    input): ceil(tokens / hidden_size), at least 1; each shard holds ceil(tokens / shards)
    positions, the last one the rest. The rule of ALST's TiledMLP and DeepSpeed's
    (`num_shards = ceil(seqlen / hidden_size)`): a shard's intermediates are then about the size
    of the (hidden x intermediate) weights they multiply. With padding-free packing `tokens` is
    the flattened micro-batch (batch x seq_len)."""
    return max(1, math.ceil(tokens / max(1, hidden_size)))


def mlp_shard_tokens(tokens: int, hidden_size: int) -> int:
    """Positions in the largest shard (see `mlp_shards`)."""
    return math.ceil(tokens / mlp_shards(tokens, hidden_size))


def effective_setup(setup):
    """The setup the step runs: offloading implies checkpointing (it keeps the checkpointed
    layer inputs in host RAM; without checkpointing every activation of every layer would cross
    PCIe twice), as the planner counts it (planner/memory.py `estimate_memory`). The CLI refuses
    `--offload-activations on --grad-checkpointing off` outright; a setup that has offloading on
    and checkpointing off (a plan that left checkpointing to the implication) trains with it on."""
    if getattr(setup, "offload_activations", False) and not setup.grad_checkpointing:
        from dataclasses import replace

        return replace(setup, grad_checkpointing=True)
    return setup


# -- tiled MLP ---------------------------------------------------------------------------------
def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class TiledMLP(torch.autograd.Function):
    """`fn(x)` computed shard by shard along dim -2, recomputed shard by shard in backward.

    `apply(fn, x, *params)`: `params` are the trainable tensors `fn` uses, passed as inputs so
    that autograd returns their gradients (summed over the shards); they are parameters, kept
    on `ctx` by reference (not saved tensors: nothing to pack or offload)."""

    @staticmethod
    def forward(ctx, fn, x, *params):
        tokens, hidden = x.shape[-2], x.shape[-1]
        step = mlp_shard_tokens(tokens, hidden)
        ctx.fn, ctx.step, ctx.params = fn, step, params
        ctx.device = x.device
        ctx.autocast = _autocast_state(x.device.type)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        out = None
        with torch.no_grad():
            for start in range(0, tokens, step):
                part = fn(x.narrow(-2, start, min(step, tokens - start)))
                if out is None:  # autocast may change the dtype: the first shard says which
                    out = part.new_empty((*x.shape[:-1], part.shape[-1]))
                out.narrow(-2, start, part.shape[-2]).copy_(part)
                del part
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        params = ctx.params
        tokens = x.shape[-2]
        x_needs = ctx.needs_input_grad[1]
        x_grad = torch.empty_like(x) if x_needs else None
        p_grads: list[Any] = [None] * len(params)
        devices = [ctx.device] if ctx.cuda_rng is not None else []
        enabled, dtype = ctx.autocast
        # identity hooks: the recomputation's saved tensors stay where they are, whatever
        # saved-tensor hooks (activation offloading) are active around the backward
        identity = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        with torch.random.fork_rng(devices=devices, device_type=ctx.device.type), identity, \
                torch.enable_grad(), torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            for start in range(0, tokens, ctx.step):
                n = min(ctx.step, tokens - start)
                xs = x.narrow(-2, start, n).detach().requires_grad_(x_needs)
                out = ctx.fn(xs)
                inputs = ([xs] if x_needs else []) + list(params)
                grads = torch.autograd.grad(out, inputs, grad_out.narrow(-2, start, n), allow_unused=True)
                del out
                if x_needs:
                    x_grad.narrow(-2, start, n).copy_(grads[0])
                    grads = grads[1:]
                for i, g in enumerate(grads):
                    if g is not None:
                        p_grads[i] = g if p_grads[i] is None else p_grads[i].add_(g)
                del grads
        return (None, x_grad, *p_grads)


def _tiled_forward(module: torch.nn.Module, forward, x, *args, **kwargs):
    if args or kwargs or not torch.is_grad_enabled():  # not the plain `mlp(x)` of a training step
        return forward(x, *args, **kwargs)
    params = tuple(p for p in module.parameters() if p.requires_grad)
    if not x.requires_grad and not params:
        return forward(x)
    return TiledMLP.apply(forward, x, *params)


def apply_tiled_mlp(model: torch.nn.Module) -> int:
    """Route every decoder layer's MLP through `TiledMLP`; returns how many were routed."""
    n = 0
    for name, module in model.named_modules():
        if _MLP_NAME.search(name) and not getattr(module, "_tuneplan_tiled", False):
            module.forward = functools.partial(_tiled_forward, module, module.forward)
            module._tuneplan_tiled = True
            n += 1
    return n


# -- activation offloading ---------------------------------------------------------------------
CPU_OFFLOAD_OPTIONS: dict[str, Any] = {"use_pin_memory": False, "use_streams": False}
"""trl `get_act_offloading_ctx_manager` options on the CPU (see the module doc)."""


class _CpuDeviceModule:
    """`torch.cpu` with the `empty_cache` trl calls when bitsandbytes is loaded (the CPU has no
    cache to empty)."""

    def __getattr__(self, name):
        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None


@contextlib.contextmanager
def _accelerator_is(device_type: str):
    orig = torch.accelerator.current_accelerator
    torch.accelerator.current_accelerator = lambda *a, **k: torch.device(device_type)
    try:
        yield
    finally:
        torch.accelerator.current_accelerator = orig


def offload_manager(model: torch.nn.Module):
    """trl's activation-offloading context for a model on the CPU (CUDA runs let trl build its
    own: `SFTConfig(activation_offloading=True)`). Options: `CPU_OFFLOAD_OPTIONS`."""
    from trl.models.activation_offloading import get_act_offloading_ctx_manager

    with _accelerator_is("cpu"):
        manager = get_act_offloading_ctx_manager(model, **CPU_OFFLOAD_OPTIONS)
    manager.device_module = _CpuDeviceModule()
    return manager


# -- chunked RMSNorm ---------------------------------------------------------------------------
# decoder-layer norms and the final norm of the decoder (`model.norm`, under peft
# `base_model.model.model.norm`)
_NORM_NAME = re.compile(r"(^|\.)layers\.\d+\.(input_layernorm|post_attention_layernorm)$|(^|\.)model\.norm$")


def _code_key(fn) -> tuple:
    code = fn.__code__
    return code.co_code, code.co_consts, code.co_names


@functools.lru_cache(maxsize=None)
def _llama_norm_key() -> tuple:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return _code_key(LlamaRMSNorm.forward)


def is_llama_rmsnorm(module: torch.nn.Module) -> bool:
    """Whether `module` runs transformers' `LlamaRMSNorm.forward` (the same bytecode, constants
    and names: the models whose norm is a "Copied from Llama" one); Gemma's `(1 + weight)`
    variant and others differ."""
    forward = getattr(type(module), "forward", None)
    return (forward is not None and hasattr(forward, "__code__") and hasattr(module, "variance_epsilon")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and _code_key(forward) == _llama_norm_key())


class ChunkedRMSNorm(torch.autograd.Function):
    """`LlamaRMSNorm` (`weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)`) chunk by chunk
    over the flattened positions; saves `x` and the fp32 `rstd` (positions x 1). See the module
    doc for the gradient."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        hidden = x.shape[-1]
        x2 = x.reshape(-1, hidden)
        n = x2.shape[0]
        step = norm_chunk_tokens(n, hidden)
        out = x2.new_empty(x2.shape, dtype=torch.result_type(weight, x2))
        rstd = x2.new_empty((n, 1), dtype=torch.float32)
        for start in range(0, n, step):
            x32 = x2[start:start + step].to(torch.float32, copy=True)
            r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            rstd[start:start + step].copy_(r)
            y = x32.mul_(r).to(x.dtype)
            del x32
            torch.mul(weight, y, out=out[start:start + step])
            del y, r
        ctx.save_for_backward(x, rstd)
        ctx.step = step
        ctx.weight = weight  # a parameter: kept by reference, not a saved tensor (nothing to offload)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, rstd = ctx.saved_tensors
        weight = ctx.weight
        hidden = x.shape[-1]
        x2 = x.reshape(-1, hidden)
        g2 = grad_out.reshape(-1, hidden)
        n, step = x2.shape[0], ctx.step
        dx = torch.empty_like(x2) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(hidden, dtype=torch.float32, device=x.device) if ctx.needs_input_grad[1] else None
        for start in range(0, n, step):
            xc, gc, rc = x2[start:start + step], g2[start:start + step], rstd[start:start + step]
            x32 = xc.to(torch.float32, copy=True)
            if dw is not None:  # d(weight * y.to(dtype)) / d weight = y.to(dtype), summed over positions
                yc = x32.mul(rc).to(x.dtype)
                prod = gc.to(torch.float32, copy=True).mul_(yc)  # never more than the dx branch holds
                dw += prod.sum(0)
                del yc, prod
            if dx is not None:
                g = (gc * weight).to(torch.float32)  # the grad of y.to(dtype), through the cast to fp32
                dot = (g * x32).sum(-1, keepdim=True)
                # d/dx [x * rstd(x)] . g = rstd * g - x * rstd^3 * sum(g * x) / hidden
                x32.mul_(rc.pow(3).mul_(dot).div_(hidden))
                dx[start:start + step].copy_(g.mul_(rc).sub_(x32))
                del g, dot
            del x32
        return (dx.view(x.shape) if dx is not None else None,
                dw.to(weight.dtype) if dw is not None else None, None)


def _chunked_norm_forward(module: torch.nn.Module, x):
    return ChunkedRMSNorm.apply(x, module.weight, module.variance_epsilon)


def apply_chunked_norm(model: torch.nn.Module) -> int:
    """Route the decoder layers' norms and the final norm through `ChunkedRMSNorm` where they are
    `LlamaRMSNorm`s (`is_llama_rmsnorm`); returns how many were routed."""
    n = 0
    for name, module in model.named_modules():
        if _NORM_NAME.search(name) and is_llama_rmsnorm(module) and not getattr(module, "_tuneplan_chunked", False):
            module.forward = functools.partial(_chunked_norm_forward, module)
            module._tuneplan_chunked = True
            n += 1
    return n


# -- host embedding ----------------------------------------------------------------------------
class HostEmbedding(torch.nn.Embedding):
    """An `nn.Embedding` whose frozen table is a plain tensor in host RAM (`_host_weight`, not a
    parameter): the lookup runs there and only the looked-up rows go to the ids' device. Made by
    `apply_host_embedding` (a class swap in place); see the module doc."""

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]  # read-only: no setter
        return self.__dict__["_host_weight"]

    def forward(self, input):
        table = self.__dict__["_host_weight"]
        ids = input.to(table.device)
        out = torch.nn.functional.embedding(ids, table, self.padding_idx, self.max_norm, self.norm_type,
                                            self.scale_grad_by_freq, self.sparse)
        del ids
        return out.to(input.device)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.__dict__["_host_weight"]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key in state_dict:
            value = state_dict[key]
            table = self.__dict__["_host_weight"]
            if tuple(value.shape) != tuple(table.shape):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, "
                                  f"the host table has shape {tuple(table.shape)}.")
            else:
                with torch.no_grad():
                    table.copy_(value)
        elif strict:
            missing_keys.append(key)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _embeddings(model: Any, which: str) -> Any:
    """`model.get_input_embeddings()` / `get_output_embeddings()` (transformers' and peft's models
    have them), or None."""
    get = getattr(model, f"get_{which}_embeddings", None)
    return get() if callable(get) else None


def host_embedding_refusal(model: torch.nn.Module) -> str | None:
    """Why `apply_host_embedding` leaves `model`'s input embedding on the card, or None."""
    emb = _embeddings(model, "input")
    if emb is None:
        return "the model has no input embedding"
    if type(emb) is HostEmbedding:
        return "already in host RAM"
    if type(emb) is not torch.nn.Embedding:
        return f"the input embedding is a {type(emb).__name__}, not a plain nn.Embedding"
    weight = emb.weight
    out = _embeddings(model, "output")
    if out is not None and getattr(out, "weight", None) is weight:
        return "the input embedding is tied to the output embedding (the lm_head the loss uses on the card)"
    if weight.requires_grad:
        return "the input embedding is trained (full fine-tuning)"
    return None


def apply_host_embedding(model: torch.nn.Module) -> int:
    """Move the frozen, untied `nn.Embedding` input table of `model` to `HOST_DEVICE` as a
    `HostEmbedding` (see the module doc); returns the table's bytes, 0 when it does not apply
    (`host_embedding_refusal` says why)."""
    if host_embedding_refusal(model) is not None:
        return 0
    emb = _embeddings(model, "input")
    param = emb._parameters.pop("weight")
    on_cuda = param.device.type == "cuda"
    table = param.detach().to(HOST_DEVICE)
    nbytes = table.numel() * table.element_size()
    del param
    emb.__dict__["_host_weight"] = table
    emb.__class__ = HostEmbedding
    if on_cuda and table.device.type != "cuda":
        torch.cuda.empty_cache()  # the card's copy is free now: give its block back
    return nbytes
