"""Measure the live tensor bytes of real training steps of our path (CPU or fake/meta).

This is how the planner's memory model earns its accuracy: the step runs under
`tuneplan.training.memory_tracker.LiveTensorTracker` (every tensor storage an op creates,
counted once while it lives, on top of the weights and buffers), whose peak is what
`torch.cuda.max_memory_allocated()` would read for the same ops, without allocator rounding;
`memory_tracker.phase_hooks` marks the phases. The categories of live bytes are the
tracker's.

Two ways to run it:

* `trace_training(model, tokenizer, setup)` drives the real trl `SFTTrainer` built by
  `tuneplan.training.sft.build_trainer` for two optimizer steps on a CPU model (built by
  `tuneplan.training.modeling`).
* `trace_fake(config, setup)` runs the same trainer on fake tensors (`FakeTensorMode`:
  meta storage, CPU device, so CPU autocast applies; plain meta tensors ignore autocast)
  for a full-size model without memory. 4-bit weights: bitsandbytes' `Params4bit` is a
  Tensor subclass that cannot wrap a FakeTensor, so each quantized weight is a stand-in (a
  plain frozen Parameter holding exactly what `Params4bit._quantize` stores, produced by
  bitsandbytes' own `quantize_4bit` through its registered fake kernel; see
  `_fake_params4bit`); the forward/backward are bitsandbytes' real `Linear4bit` /
  `MatMul4Bit` / `dequantize_4bit` code. Data-dependent scalar reads (`.item()`,
  `bool(tensor)`) are answered with the value they have in a real step of unpadded rows
  (`_fake_scalars`); they only steer logging and mask shortcuts. `packing=True` packs
  documents of half a row, two per row, and collates them on real tensors (`_fake_packing`:
  the collator's sequence-start search has a data-dependent shape). On small models the fake
  trace equals the CPU trace byte for byte (tests/verification/test_memory_trace.py), MoE
  and trl's chunked head included. `semantics="cuda"` emulates a CUDA card's step on the
  same fake tensors (verification/cuda_semantics.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import torch

from planner.setup import TrainSetup
from tuneplan.training.memory_tracker import (
    STATIC, LiveTensorTracker, classify_model, phase_hooks, run_config_for, simple_tokenizer, token_dataset,
)
from verification.cuda_semantics import MECHANISMS, cuda_semantics


# -- result -----------------------------------------------------------------------------
@dataclasses.dataclass
class TraceResult:
    """Live tensor bytes of two optimizer steps; step 2 is the one the planner predicts."""

    peak_bytes: int
    """Max of live tensor bytes over loading-complete .. end of step 2 (max_memory_allocated)."""
    peak_where: str
    """`step<N>.<phase>` where the peak happened."""
    peak_breakdown: dict[str, int]
    """Category -> bytes live at the peak."""
    static: dict[str, int]
    """Weights, adapters, gradients (end of step-2 backward), optimizer states (after step 2)."""
    phases: dict[str, dict[str, int]]
    """`step<N>.<phase>` -> breakdown at that phase's peak, with `total`."""
    marks: dict[str, dict[str, int]]
    """Named moments (`step2.forward_end`, `step2.backward_end`, ...) -> breakdown."""
    mark_ops: dict[str, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)
    """Named moment -> category -> creating op (e.g. `mm.default`) -> live bytes (top 12)."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What was traced: setup, config, device, library versions."""
    unified_peak_bytes: int = 0
    """Max of the bytes in CUDA managed memory (bitsandbytes' paged optimizer states, CUDA
    semantics): outside `peak_bytes`, as outside `max_memory_allocated`."""
    host_peak_bytes: int = 0
    """Max of the bytes held in host RAM by activation offloading and the host embedding's table
    and lookups (CUDA semantics; 0 on the CPU, where they are in the one memory and counted in
    `peak_bytes`)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def _result(tr: LiveTensorTracker, meta: dict) -> TraceResult:
    phases = {f"step{s}.{p}": {"total": v[0], **v[1]} for (s, p), v in sorted(tr.phase_peaks.items())}
    m2 = tr.marks.get("step2.backward_end", {})
    o2 = tr.marks.get("step2.optimizer_end", {})
    static = {k: tr.marks.get("step2.start", {}).get(k, 0) for k in STATIC[:3]}
    static["gradients"] = m2.get("gradients", 0)
    static["optimizer_states"] = o2.get("optimizer_states", 0)
    return TraceResult(
        peak_bytes=tr.peak,
        peak_where=f"step{tr.peak_where[0]}.{tr.peak_where[1]}",
        peak_breakdown=dict(sorted(tr.peak_breakdown.items())),
        static=static,
        phases=phases,
        marks=tr.marks,
        mark_ops=tr.mark_ops,
        meta=meta,
        host_peak_bytes=tr.host_peak,
        unified_peak_bytes=tr.unified_peak,
    )


# -- driving the real trainer -------------------------------------------------------------
def build_trace_trainer(model, tokenizer, setup: TrainSetup, vocab_size: int, steps: int = 2):
    """Our SFTTrainer (`sft.build_trainer`) on `steps` micro-batches of random token rows."""
    from tuneplan.training.sft import build_trainer

    ds = token_dataset(vocab_size, setup, steps)
    return build_trainer(run_config_for(setup, steps), model, tokenizer, ds)


def trace_training(model, tokenizer, setup: TrainSetup, *, steps: int = 2, meta: dict | None = None) -> TraceResult:
    """Train `steps` optimizer steps through our SFTTrainer and trace live tensor bytes."""
    vocab = model.get_input_embeddings().weight.shape[0]
    trainer = build_trace_trainer(model, tokenizer, setup, vocab, steps)
    tr = LiveTensorTracker()
    # trl may recast trainable parameters in __init__ (QLoRA -> bf16): classify afterwards
    classify_model(tr, trainer.model)
    with phase_hooks(tr, trainer, trainer.model), tr:
        trainer.train()
    info = {"setup": dataclasses.asdict(setup), "device": "cpu", "driver": "tuneplan.training.sft.build_trainer",
            **_versions(), **(meta or {})}
    return _result(tr, info)


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__}


# -- the same step on fake tensors (full size, no memory) ---------------------------------
@contextlib.contextmanager
def fake_mode():
    """A `FakeTensorMode` (fake CPU tensors) in which `Module.to()` works.

    torch 2.13 moves FakeTensor parameters with `torch.utils.swap_tensors`, which refuses a
    tensor that has weak references; the mode's own real->fake memo (`MetaConverter.
    tensor_memo`, a WeakValueDictionary that only caches conversions) holds one on every
    `nn.Parameter`. We clear that cache before each swap (peft's adapter `.to()`, trl's casts)
    and keep the swapped parameter's Python attributes. A `.to()` that changes nothing (the
    trainer moving the model to the device it is on) keeps the tensor itself, as it does for
    real tensors, so gradient hooks registered on it stay.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    orig = torch.utils.swap_tensors

    def swap(t1, t2):
        # also keep t1's Python attributes (the 4-bit stand-in's quant_state, ...) as a real
        # Params4bit keeps them across `.to()`
        attrs = dict(getattr(t1, "__dict__", {}))
        same = (t1.dtype == t2.dtype and t1.shape == t2.shape and t1.stride() == t2.stride()
                and t1.untyped_storage() is t2.untyped_storage())
        if same:  # `.to()` to where it already is: keep the tensor (and its grad hooks) as it is
            return None
        mode.fake_tensor_converter.meta_converter.tensor_memo.clear()
        out = orig(t1, t2)
        t1.__dict__.update(attrs)
        return out

    torch.utils.swap_tensors = swap
    try:
        with mode:
            yield mode
    finally:
        torch.utils.swap_tensors = orig


def _fake_params4bit(w: torch.Tensor, template, module) -> torch.nn.Parameter:
    """The stand-in for a quantized `bnb.nn.Params4bit` on fake tensors.

    `Params4bit` is a Tensor subclass made with `_make_subclass`, which cannot wrap a
    FakeTensor. So we do what `Params4bit._quantize` does (bitsandbytes nn/modules.py) with
    bitsandbytes' own `functional.quantize_4bit` (its registered fake kernel gives the packed
    storage and the absmax / double-quant state their real shapes and dtypes) and keep the
    result in a plain frozen `nn.Parameter` carrying the same attributes (`quant_state`,
    `quant_type`, `blocksize`, ...). `Linear4bit.forward` and peft's 4-bit LoRA layer only
    read those attributes, so forward and backward run bitsandbytes' real code path
    (`matmul_4bit` -> `MatMul4Bit` -> `dequantize_4bit`).
    """
    import bitsandbytes as bnb

    packed, qs = bnb.functional.quantize_4bit(
        w.contiguous(), blocksize=template.blocksize, compress_statistics=template.compress_statistics,
        quant_type=template.quant_type, quant_storage=template.quant_storage)
    p = torch.nn.Parameter(packed, requires_grad=False)
    for k in ("blocksize", "compress_statistics", "quant_type", "quant_storage"):
        setattr(p, k, getattr(template, k))
    p.quant_state = qs
    p.bnb_quantized = True
    p.module = module
    p.is_fake_params4bit = True
    module.quant_state = qs
    return p


def build_fake_model(config, setup: TrainSetup, device_type: str = "cpu"):
    """`modeling.build_from_config` on fake tensors: steps 1-3 with bitsandbytes' own 4-bit.

    Must be called inside the fake mode. QLoRA follows `from_pretrained`'s quantizer: the
    transformers bnb quantizer replaces the linears (`replace_with_bnb_linear`, same
    modules-to-not-convert) and each 16-bit weight becomes `Params4bit(...).to(device)`
    exactly as `transformers.integrations.bitsandbytes.Bnb4bitQuantize.convert` does.
    """
    from transformers import AutoModelForCausalLM

    from tuneplan.training import modeling

    cfg = modeling.config_from_dict(config)
    notes: list[str] = []
    attn = modeling.resolve_attention(cfg, setup.attn, device_type, notes)
    dtype = modeling.torch_dtype(setup.compute_dtype)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    if setup.method == "qlora":
        import bitsandbytes as bnb
        from transformers.quantizers.auto import AutoHfQuantizer

        q = AutoHfQuantizer.from_config(modeling.bnb_config(setup), pre_quantized=False)
        from torch.utils._python_dispatch import _disable_current_modes

        linears = {n: (m.weight.data, m.bias) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        # replace_with_bnb_linear builds each Linear4bit on the meta device (a real meta
        # Params4bit); it must run outside the fake mode, then the stand-in takes its place.
        with _disable_current_modes():
            q.preprocess_model(model, device_map={"": "cpu"}, dtype=dtype)
            # the double-quant code map is built from Python floats (`.tolist()`), which fake
            # tensors cannot answer; bitsandbytes caches it per process, so build it for real
            if "dynamic" not in bnb.functional.name2qmap:
                bnb.functional.name2qmap["dynamic"] = bnb.functional.create_dynamic_map().to("cpu")
        for n, m in model.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                w, b = linears[n]
                m.weight = _fake_params4bit(w, m.weight, m)
                if b is not None:
                    m.bias = b
        q.postprocess_model(model)
        model.hf_quantizer = q
        model.config.quantization_config = q.quantization_config
    model = modeling.prepare_for_training(model, setup, notes)
    return model, notes


@contextlib.contextmanager
def _fake_scalars():
    """Answer data-dependent scalar reads of fake tensors with 1 / True.

    Under fake tensors `.item()` / `bool()` have no value. In the trainer's step they feed
    logging (loss, grad norm, token counts, trl's entropy/accuracy metrics: nothing
    allocated) and transformers' mask shortcuts: "all attention-mask entries are 1" and
    "only one packed sequence" (masking_utils). True is the real answer for the rows the trace
    feeds (full rows without padding) with `packing=False`, or `packing=True` with
    micro_batch 1 (packing itself is refused by `trace_fake`: its sequence-start search has a
    data-dependent output shape).
    """
    from torch._subclasses.fake_tensor import FakeTensor

    orig_item, orig_bool = torch.Tensor.item, torch.Tensor.__bool__

    def item(self):
        if isinstance(self, FakeTensor):
            return True if self.dtype == torch.bool else (1 if not self.is_floating_point() else 1.0)
        return orig_item(self)

    def as_bool(self):
        if isinstance(self, FakeTensor):
            return True
        return orig_bool(self)

    # transformers' mask helpers treat fake tensors as "tracing" and then always build the
    # 4-D mask (masking_utils `is_tracing`); a real step of full rows skips it
    import transformers.utils.import_utils as iu

    orig_is_fake = iu.is_fake_tensor
    torch.Tensor.item, torch.Tensor.__bool__ = item, as_bool
    iu.is_fake_tensor = lambda t: False
    try:
        yield
    finally:
        torch.Tensor.item, torch.Tensor.__bool__ = orig_item, orig_bool
        iu.is_fake_tensor = orig_is_fake


@contextlib.contextmanager
def _fake_packing(trainer, setup: TrainSetup, tracker: LiveTensorTracker):
    """Let packed micro-batches through the fake step.

    trl's padding-free collator finds the sequence starts with `nonzero` (an output size fake
    tensors cannot know): it runs on real tensors here, outside the fake mode, and the model
    receives real (constant) batch tensors. transformers' `find_packed_sequence_indices` then
    asks whether any row holds several sequences (`.all()` on a fake tensor); every packed
    row of the trace holds two documents, so the answer is yes: it returns the packed mask."""
    if not setup.packing:
        yield
        return
    import transformers.masking_utils as mu
    import transformers.utils.import_utils as iu
    from torch.utils._python_dispatch import _disable_current_modes

    collate = trainer.data_collator

    def real_collate(examples):
        with _disable_current_modes():
            batch = collate(examples)
        for t in batch.values():  # the batch a real step allocates (input ids, labels, positions)
            tracker.track(t)
        return batch

    orig_find = mu.find_packed_sequence_indices

    def find(position_ids):
        fake = iu.is_fake_tensor
        iu.is_fake_tensor = lambda t: True  # "tracing": skip the one-sequence shortcut
        try:
            return orig_find(position_ids)
        finally:
            iu.is_fake_tensor = fake

    trainer.data_collator = real_collate
    mu.find_packed_sequence_indices = find
    try:
        yield
    finally:
        trainer.data_collator = collate
        mu.find_packed_sequence_indices = orig_find


def trace_fake(config, setup: TrainSetup, *, steps: int = 2, meta: dict | None = None, semantics: str = "cpu",
               arch: str = "hopper", mechanisms=None) -> TraceResult:
    """`trace_training` of a model built from `config` on fake tensors (any size, no memory).

    `semantics="cpu"`: the step a CPU runs. `semantics="cuda"`: the step a CUDA card of
    architecture `arch` runs, emulated on the fake CPU tensors by the mechanisms of
    `verification.cuda_semantics` (all of them, or those named in `mechanisms`)."""
    from tuneplan.training import modeling

    if semantics not in ("cpu", "cuda"):
        raise ValueError(f"semantics must be 'cpu' or 'cuda' (got {semantics!r})")

    cfg = modeling.config_from_dict(config)
    tokenizer = simple_tokenizer(cfg.vocab_size)
    # packed runs: two documents per row, as real packed rows hold several
    ds = token_dataset(cfg.vocab_size, setup, steps, docs_per_row=2 if setup.packing else 1)
    from tuneplan.training.sft import build_trainer

    emulate = cuda_semantics(arch, MECHANISMS if mechanisms is None else mechanisms) if semantics == "cuda" \
        else contextlib.nullcontext()
    with fake_mode(), emulate as emu:
        model, notes = build_fake_model(cfg, setup, device_type="cuda" if semantics == "cuda" else "cpu")
        trainer = build_trainer(run_config_for(setup, steps), model, tokenizer, ds)
        tr = LiveTensorTracker()
        tr.emulation = emu
        tr.host_device = getattr(emu, "host_device", None)
        if emu is not None:
            emu.tracker = tr
        if tr.host_device is not None:
            tr.host_size = emu.host_nbytes
        classify_model(tr, trainer.model)  # after `host_device`: a host embedding's table counts as host RAM
        with phase_hooks(tr, trainer, trainer.model), _fake_scalars(), _fake_packing(trainer, setup, tr), tr:
            trainer.train()
    info = {"setup": dataclasses.asdict(setup), "device": "fake-cpu" if emu is None else f"fake-cuda-{arch}",
            "driver": "tuneplan.training.sft.build_trainer", "notes": notes, **_versions(), **(meta or {})}
    if emu is not None:
        info["cuda_mechanisms"] = sorted(emu.on)
        info["sdpa_backends"] = sorted(set(emu.backends))
    return _result(tr, info)
