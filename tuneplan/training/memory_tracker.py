"""Count the live tensor bytes of a real training step, op by op, and mark its phases.

A `TorchDispatchMode` (`LiveTensorTracker`) sees every tensor an op creates during the step,
tracks each distinct storage (views share it, so they are counted once) until Python frees it
(a weakref callback on the storage object), on top of a baseline of what existed before
(weights, quantization constants, buffers: `classify_model`). The peak of the sum is what
`torch.cuda.max_memory_allocated()` would read for the same ops, without allocator rounding.
`phase_hooks` marks the phases of the trainer's step through hooks: model forward
(`forward`), the trl chunked LM head / loss after the decoder backbone (`loss`),
`accelerator.backward` (`backward`), gradient clipping (`clip`), `optimizer.step`
(`optimizer`).

`tuneplan probe` counts a CPU step with it (a CPU has no allocator counter), on the rows and
the run configuration of `token_dataset` / `run_config_for`. The memory trace that checks the
planner against real and fake-tensor steps (verification/memory_trace.py, not shipped) is
built on the same tracker.

Categories of live bytes: `quantized_weights` (4-bit storages and their quant state),
`unquantized_weights` (frozen 16/32-bit parameters and buffers), `adapter_weights`
(trainable parameters), `gradients`, `optimizer_states`, and everything else by the phase
that created it (`forward` = saved activations, `loss`, `backward`, `clip`, `optimizer`,
`other` e.g. the input batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from planner.setup import TrainSetup

STATIC = ("quantized_weights", "unquantized_weights", "adapter_weights", "gradients", "optimizer_states")
PHASES = ("other", "forward", "loss", "backward", "clip", "optimizer")
HOST = "host"
"""The category of storages on `LiveTensorTracker.host_device` (host RAM, outside the peak)."""
UNIFIED = "unified_memory"
"""Storages an emulated CUDA run keeps in CUDA managed memory, outside the caching allocator and
so outside the peak (`LiveTensorTracker.to_unified`)."""


@dataclasses.dataclass
class _Entry:
    nbytes: int
    category: str
    op: str = ""


class LiveTensorTracker(TorchDispatchMode):
    """Counts the bytes of every live tensor storage; keeps the peak and its breakdown."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, _Entry] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.by_cat: dict[str, int] = {}
        self.current = 0
        self.phase = "other"
        self.step = 0
        # overall peak and, per (step, phase), the peak and the breakdown at it
        self.peak = 0
        self.peak_breakdown: dict[str, int] = {}
        self.peak_where: tuple[int, str] = (0, "other")
        self.phase_peaks: dict[tuple[int, str], tuple[int, dict[str, int]]] = {}
        self.marks: dict[str, dict[str, int]] = {}
        self.mark_ops: dict[str, dict[str, dict[str, int]]] = {}
        self._op = ""
        # called after every op as `emulation.after(tracker, func, args, kwargs)`: the CUDA
        # semantics of the verification trace (verification/cuda_semantics.py); None here
        self.emulation: Any = None
        # the device that stands for host RAM in an emulated trace (activation offloading's
        # host copies): its storages count in `host_current` / `host_peak`, not in the peak
        self.host_device: str | None = None
        self.host_current = 0
        self.host_peak = 0
        self.host_size = lambda nbytes: nbytes  # what the host allocator takes for a request
        self.unified_current = 0
        self.unified_peak = 0

    # -- storage bookkeeping -----------------------------------------------------------
    def _freed(self, key: int, _ref: object = None) -> None:
        e = self.live.pop(key, None)
        self._refs.pop(key, None)
        if e is not None and e.category == HOST:
            self.host_current -= e.nbytes
        elif e is not None and e.category == UNIFIED:
            self.unified_current -= e.nbytes
        elif e is not None:
            self.current -= e.nbytes
            self.by_cat[e.category] -= e.nbytes

    def track(self, t: torch.Tensor, category: str | None = None) -> None:
        """Count `t`'s storage (once) under `category` (default: the current phase)."""
        if not isinstance(t, torch.Tensor):
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse / nested: not produced here
            return
        key = id(st)
        e = self.live.get(key)
        nbytes = st.nbytes()
        if self.host_device is not None and t.device.type == self.host_device:
            if e is None:
                nbytes = self.host_size(nbytes)
                self.live[key] = _Entry(nbytes, HOST, self._op)
                self._refs[key] = weakref.ref(st, functools.partial(self._freed, key))
                self.host_current += nbytes
                self.host_peak = max(self.host_peak, self.host_current)
            return
        if e is not None and e.category in (HOST, UNIFIED):  # outside the peak, stays there
            return
        if e is not None:
            if nbytes != e.nbytes:  # resized in place (out= ops)
                self.current += nbytes - e.nbytes
                self.by_cat[e.category] += nbytes - e.nbytes
                e.nbytes = nbytes
                self._check_peak()
            if category is not None and category != e.category:
                self.by_cat[e.category] -= e.nbytes
                e.category = category
                self.by_cat[category] = self.by_cat.get(category, 0) + e.nbytes
            return
        cat = category or self.phase
        self.live[key] = _Entry(nbytes, cat, self._op)
        self._refs[key] = weakref.ref(st, functools.partial(self._freed, key))
        self.current += nbytes
        self.by_cat[cat] = self.by_cat.get(cat, 0) + nbytes
        self._check_peak()

    def to_unified(self, t: torch.Tensor) -> None:
        """Move `t`'s storage out of the peak into managed memory (`UNIFIED`)."""
        self.track(t)
        e = self.live.get(id(t.untyped_storage()))
        if e is None or e.category in (HOST, UNIFIED):
            return
        self.current -= e.nbytes
        self.by_cat[e.category] -= e.nbytes
        e.category = UNIFIED
        self.unified_current += e.nbytes
        self.unified_peak = max(self.unified_peak, self.unified_current)

    def allocate_static(self, nbytes: int, category: str) -> None:
        """Count `nbytes` that a CUDA run holds to the end (e.g. a cuBLAS workspace)."""
        self.current += nbytes
        self.by_cat[category] = self.by_cat.get(category, 0) + nbytes
        self._check_peak()

    def transient(self, nbytes: int) -> None:
        """Count `nbytes` that a kernel holds while it runs (its workspace), next to its outputs."""
        self.current += nbytes
        self.by_cat["workspace"] = self.by_cat.get("workspace", 0) + nbytes
        self._check_peak()
        self.current -= nbytes
        self.by_cat["workspace"] -= nbytes

    def _check_peak(self) -> None:
        key = (self.step, self.phase)
        pp = self.phase_peaks.get(key)
        if pp is None or self.current > pp[0]:
            self.phase_peaks[key] = (self.current, {k: v for k, v in self.by_cat.items() if v})
        if self.current > self.peak:
            self.peak = self.current
            self.peak_breakdown = {k: v for k, v in self.by_cat.items() if v}
            self.peak_where = key
            if self.step >= 2:  # the step the planner predicts: what the peak is made of, op by op
                self.mark("peak")

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._check_peak()

    def mark(self, name: str) -> None:
        """Remember the breakdown now under `name` (e.g. `step2.forward_end`), and for the
        non-static categories the bytes by the op that created them (top 12 each)."""
        self.marks[name] = {"total": self.current, **{k: v for k, v in self.by_cat.items() if v}}
        ops: dict[str, dict[str, int]] = {}
        for e in self.live.values():
            if e.category not in STATIC:
                d = ops.setdefault(e.category, {})
                d[e.op] = d.get(e.op, 0) + e.nbytes
        self.mark_ops[name] = {c: dict(sorted(d.items(), key=lambda kv: -kv[1])[:12]) for c, d in ops.items()}

    # -- dispatch ---------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._op = func.__name__
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        if self.emulation is not None:
            self.emulation.after(self, func, args, kwargs or {})
        return out


# -- baseline classification ------------------------------------------------------------
def _quant_state_tensors(qs: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if qs is None:
        return out
    for name in ("absmax", "code", "offset"):
        v = getattr(qs, name, None)
        if isinstance(v, torch.Tensor):
            out.append(v)
    out += _quant_state_tensors(getattr(qs, "state2", None))
    return out


def classify_model(tracker: LiveTensorTracker, model: torch.nn.Module) -> None:
    """Register the model's parameters, buffers, 4-bit quant state and host embedding table (a
    frozen weight; in host RAM when on `tracker.host_device`) with their category."""
    for p in model.parameters():
        if type(p).__name__ == "Params4bit" or getattr(p, "is_fake_params4bit", False):
            tracker.track(p, "quantized_weights")
            for t in _quant_state_tensors(getattr(p, "quant_state", None)):
                tracker.track(t, "quantized_weights")
        elif p.requires_grad:
            tracker.track(p, "adapter_weights")
        else:
            tracker.track(p, "unquantized_weights")
    for b in model.buffers():
        tracker.track(b, "unquantized_weights")
    for m in model.modules():  # a host embedding's frozen table (long_context.HostEmbedding): not a parameter
        table = m.__dict__.get("_host_weight")
        if isinstance(table, torch.Tensor):
            tracker.track(table, "unquantized_weights")


def classify_optimizer(tracker: LiveTensorTracker, optimizer) -> None:
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                tracker.track(v, "optimizer_states")



@contextlib.contextmanager
def phase_hooks(tr: LiveTensorTracker, trainer, model):
    """Mark phases through module hooks, a wrapped accelerator.backward and optimizer hooks."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    handles = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix, None) or base.model

    def fwd_pre(mod, args, kwargs=None):
        if torch.is_grad_enabled() and tr.phase in ("other", "optimizer_done"):
            tr.step += 1
            tr.mark(f"step{tr.step}.start")
            tr.set_phase("forward")
        elif torch.is_grad_enabled() and tr.phase == "clip":
            tr.set_phase("forward")  # the next micro-batch of a gradient-accumulation step

    def backbone_post(mod, args, out):
        if tr.phase == "forward":
            tr.set_phase("loss")

    def fwd_post(mod, args, out):
        if tr.phase in ("forward", "loss"):
            tr.mark(f"step{tr.step}.forward_end")
            tr.set_phase("loss")

    handles.append(model.register_forward_pre_hook(fwd_pre, with_kwargs=True))
    handles.append(backbone.register_forward_hook(backbone_post))
    handles.append(model.register_forward_hook(fwd_post))

    def on_grad(p):
        tr.track(p.grad, "gradients")

    for p in model.parameters():
        if p.requires_grad:
            handles.append(p.register_post_accumulate_grad_hook(on_grad))

    acc = trainer.accelerator
    orig_backward = acc.backward

    def backward(loss, **kw):
        tr.set_phase("backward")
        r = orig_backward(loss, **kw)
        for p in model.parameters():
            if p.grad is not None:
                tr.track(p.grad, "gradients")
        tr.mark(f"step{tr.step}.backward_end")
        tr.set_phase("clip")
        return r

    acc.backward = backward

    def opt_pre(opt, args, kwargs):
        tr.set_phase("optimizer")

    def opt_post(opt, args, kwargs):
        classify_optimizer(tr, opt)
        tr.mark(f"step{tr.step}.optimizer_end")
        tr.set_phase("other")

    handles.append(register_optimizer_step_pre_hook(opt_pre))
    handles.append(register_optimizer_step_post_hook(opt_post))
    try:
        yield
    finally:
        acc.backward = orig_backward
        for h in handles:
            h.remove()


def run_config_for(setup: TrainSetup, steps: int = 2):
    """The RunConfig the trace trains with: the setup, `steps` optimizer steps, no saving."""
    from tuneplan.config import RunConfig, TrainingConfig

    return RunConfig(setup=setup, training=TrainingConfig(max_steps=steps, warmup_ratio=0.0, logging_steps=1,
                                                         save_steps=10_000, lr_scheduler="constant"))


def token_dataset(vocab_size: int, setup: TrainSetup, steps: int = 2, seed: int = 0, docs_per_row: int = 1):
    """Pre-tokenized rows of exactly `seq_len` tokens, enough for `steps` micro-batches; with
    `docs_per_row` > 1, documents of `seq_len / docs_per_row` tokens that packing fills rows with."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    n = setup.micro_batch * setup.grad_accum * steps * docs_per_row
    ids = torch.randint(3, vocab_size, (n, setup.seq_len // docs_per_row), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids})


def simple_tokenizer(vocab_size: int):
    """A word-level tokenizer with pad/bos/eos (the trace feeds token ids directly)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"t{i}": i for i in range(3, min(vocab_size, 64))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
