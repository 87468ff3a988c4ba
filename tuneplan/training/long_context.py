"""The long-context path of the training step: activation offloading and the tiled MLP.

Both are switched by the setup (`TrainSetup.offload_activations`, `TrainSetup.tiled_mlp`) and
change nothing when off. The planner models exactly what is written here (planner/memory.py);
docs/long-context-training.md describes it for users.

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
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from typing import Any

import torch

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
