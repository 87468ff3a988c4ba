"""Re-fitting a preset to the hardware at hand with the real planner, and saying what changed
and why."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable

from planner.gpus import get_gpu
from planner.gpus import format_gib as _gib
from planner.setup import TrainSetup
from tuneplan.config import (
    PredictionConfig, RunConfig,
)
from tuneplan.errors import UserError
from tuneplan.knobs import SHOWN, accumulation, kept_on_refit
from tuneplan.services.gpu import CPU_KEY as CPU
from tuneplan.services.gpu import cpu_hardware
from tuneplan.services.presets.file_format import _METHOD, Preset, fields_of
from tuneplan.services.bundled import resolve_sources
from tuneplan.services.presets.store import find_preset


SEQ_STEP = 128


# -- hardware ------------------------------------------------------------------------------------
def target_hardware(preset: Preset) -> Any:
    """The hardware the preset was made for."""
    from planner.solver import Hardware
    from tuneplan.services.planning import parse_size, resolve_hardware

    c = preset.constraints
    if c.gpu == CPU:
        return cpu_hardware()
    vram = parse_size(c.vram, "constraints.vram") if c.vram else None
    if c.gpu:
        gpu = get_gpu(c.gpu)
        if vram is not None and vram < gpu.memory_bytes:
            return Hardware(gpu=gpu, free_bytes=vram, source="vram")
        return Hardware(gpu=gpu, source="catalog")
    if vram is not None:
        return resolve_hardware(vram_bytes=vram)[0]
    return None


def local_hardware(preset: Preset | None = None, *, gpu: str | None = None, vram_bytes: int | None = None,
                   gpu_index: int | None = None, probe: Any = None) -> tuple[Any, list[str]]:
    """The hardware to re-fit for, and notes saying where it came from.

    `gpu` / `vram_bytes` as in `tuneplan plan`; otherwise the GPUs NVML finds; with none: the
    CPU for a CPU preset, else the preset's own target GPU (said in the notes)."""
    from tuneplan.services.planning import resolve_hardware

    if gpu or vram_bytes is not None:
        hw, notes, _ = resolve_hardware(gpu, vram_bytes)
        return hw, notes
    if probe is None:
        from tuneplan.services.gpu import default_probe

        probe = default_probe()
    if probe.probe():
        hw, notes, _ = resolve_hardware(index=gpu_index, probe=probe)
        return hw, notes
    status = probe.status()
    if preset is None or preset.constraints.gpu == CPU:
        hw = cpu_hardware()
        return hw, [f"No GPU found ({status}): planning for the CPU, {_gib(hw.usable_bytes())} of RAM available."]
    target = target_hardware(preset)
    if target is None:
        raise UserError(f"no GPU here ({status}) and preset {preset.name} names none: give --gpu NAME or --vram SIZE")
    return target, [f"No GPU found ({status}): planned for the preset's own target, {_card(target)}; "
                    "give --gpu NAME or --vram SIZE to re-fit it for another card."]


def _card(hw: Any) -> str:
    if hw is None:
        return "an unknown GPU"
    if hw.gpu.key == CPU:
        return "the CPU"
    usable = hw.usable_bytes()
    if hw.gpu.key == "custom":
        return f"a {_gib(usable)} GPU"
    if usable < hw.gpu.memory_bytes:
        return f"{hw.gpu.name} with {_gib(usable)} free"
    return f"{hw.gpu.name} ({_gib(hw.gpu.memory_bytes)})"


# -- re-fitting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Refit:
    """A preset re-planned for some hardware."""

    preset: Preset
    config: RunConfig
    """The re-fitted run configuration (bundled sources resolved, prediction filled)."""
    outcome: Any
    """The planning service's `PlanOutcome` of the chosen configuration."""
    fits: bool
    changes: tuple[tuple[str, Any, Any], ...]
    """(knob, saved value, new value) for every shown knob that changed."""
    reasons: tuple[str, ...]
    """Sentences: why each change (and what was kept)."""
    notes: tuple[str, ...] = ()
    """Where the hardware came from (NVML, CPU, the preset's target)."""

    def change_text(self) -> str:
        """`micro-batch 4 -> 2, accumulation 4 -> 8` (or `no change`)."""
        if not self.changes:
            return "no change"
        return ", ".join(f"{SHOWN[k]} {_show(k, a)} -> {_show(k, b)}" for k, a, b in self.changes)

    def summary_lines(self, *, skip_notes: Iterable[str] = ()) -> list[str]:
        """What `plan --preset` and `train --preset` print before the plan (`skip_notes`:
        notes printed elsewhere, e.g. by the plan table)."""
        p = self.preset
        target = target_hardware(p)
        here = self.outcome.hardware
        where = f" ({p.origin}: {p.path})" if p.path else ""
        lines = [f"Preset {p.name}{where}: {p.description}".rstrip(": ")]
        lines.append(f"  made for {_card(target)}; re-fitted for {_card(here)}")
        if self.fits:
            lines.append(f"  fits: {self.change_text()}")
        else:
            lines.append(f"  DOES NOT FIT on {_card(here)}, even with the changes a re-fit may make:")
        lines += [f"  - {r}" for r in self.reasons]
        skip = set(skip_notes)
        lines += [f"  note: {n}" for n in self.notes if n not in skip]
        return lines


def _show(knob: str, value: Any) -> str:
    if knob == "method":
        return _METHOD.get(value, str(value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _hardware_reason(target: Any, here: Any) -> str:
    if target is None:
        return f"re-planned for {_card(here)}"
    if here.gpu.key == CPU and target.gpu.key == CPU:
        return f"planned for this machine's RAM ({_gib(here.usable_bytes())} available)"
    if here.gpu.key == CPU or target.gpu.key == CPU:
        return f"{_card(here)} instead of {_card(target)}"
    a, b = here.usable_bytes(), target.usable_bytes()
    if abs(a - b) < 0.02 * b:
        if here.gpu.bf16 != target.gpu.bf16:
            return f"{_card(here)} instead of {_card(target)} (no bfloat16)" if not here.gpu.bf16 else \
                f"{_card(here)} instead of {_card(target)}"
        return f"same memory as {_card(target)}; the planner's choice for it"
    kind = "GPU" if here.gpu.key == "custom" else "card"
    return f"{_gib(a)} {kind} instead of {_gib(b)}" + (f" ({target.gpu.name})" if target.gpu.key != "custom" else "")


def _base_fixed(preset: Preset) -> dict[str, Any]:
    """Knobs the re-fit keeps: everything but REFITTED (unless listed in constraints.keep), from
    the registry (`tuneplan.knobs.kept_on_refit`). A float32 precision the preset file asks for
    is kept too: it is on purpose (CPU presets), where a GPU plan would choose 16 bits."""
    s = preset.config.setup
    keep = list(preset.constraints.keep)
    if s.compute_dtype == "float32" and "compute_dtype" in preset.setup_keys:
        keep.append("compute_dtype")
    return kept_on_refit(s, keep)


def with_knobs(preset: Preset, knobs: dict[str, Any]) -> Preset:
    """`preset` with `knobs` (the user's flags, `train --preset NAME --method lora`) set over its
    `[setup]`: the re-fit keeps them, re-fitted knobs among them included, so what it says it
    kept is what the run trains."""
    from tuneplan.config import with_setup
    from tuneplan.knobs import REFITTED

    if not knobs:
        return preset
    config = with_setup(preset.config, **knobs)
    constraints = preset.constraints
    if "micro_batch" in knobs or "grad_accum" in knobs:
        # the batch given is the batch trained: with the preset's other factor, as a flag over a file sets it
        knobs = {**knobs, "micro_batch": config.setup.micro_batch, "grad_accum": config.setup.grad_accum}
        constraints = replace(constraints, effective_batch=config.setup.effective_batch())
    keep = tuple(dict.fromkeys((*constraints.keep, *(k for k in knobs if k in REFITTED))))
    return replace(preset, config=config, setup_keys=preset.setup_keys | set(knobs),
                   constraints=replace(constraints, keep=keep))


def refit(preset: Preset, *, gpu: str | None = None, vram_bytes: int | None = None, gpu_index: int | None = None,
          hardware: Any = None, probe: Any = None, safety_margin: float | None = None,
          build_sources: bool = False) -> Refit:
    """Re-plan `preset` for the hardware at hand (see `local_hardware`) with the real planner.

    Kept: the method, the LoRA and quantization knobs, the sequence length, the effective
    batch. Re-fitted: micro-batch and accumulation (product = the effective batch),
    checkpointing, optimizer, attention, fused loss, precision. When nothing fits, in order:
    a shorter sequence (down to `constraints.min_seq_len`), then QLoRA instead of LoRA
    (`constraints.allow_method_change`), then QLoRA with a shorter sequence; each is said.
    """
    from planner.solver import DEFAULT_SAFETY_MARGIN
    from tuneplan.services.models import resolve_model
    from tuneplan.services.planning import PlanRequest, plan

    notes: list[str] = []
    if hardware is None:
        hardware, notes = local_hardware(preset, gpu=gpu, vram_bytes=vram_bytes, gpu_index=gpu_index, probe=probe)
    config = resolve_sources(preset.config, build=build_sources)
    s = preset.config.setup
    resolved = resolve_model(config.model.source)
    margin = DEFAULT_SAFETY_MARGIN if safety_margin is None else safety_margin
    effective = preset.effective_batch()
    base = _base_fixed(preset)

    def attempt(method: str, seq: int, micro_batch: int | None = None, keep: dict[str, Any] | None = None):
        fixed = {**base, "seq_len": seq, **(keep or {})}
        if micro_batch is not None:
            fixed.update(micro_batch=micro_batch, grad_accum=accumulation(effective, micro_batch))
        if method != "qlora":
            fixed.pop("quant_type", None)
            fixed.pop("double_quant", None)
        # the preset's GPU count is kept (one, unless it was made for several): never more GPUs
        return plan(PlanRequest(resolved=resolved, hardware=hardware, method=method, fixed=fixed,
                                effective_batch=effective, epochs=config.training.epochs, safety_margin=margin,
                                **_gpu_count(s)))

    reasons: list[str] = []
    first = outcome = attempt(s.method, s.seq_len)
    tried_methods = [s.method]
    if not outcome.result.fits:
        outcome = _shorter(attempt, s.method, s.seq_len, preset.constraints.min_seq_len) or outcome
        if (not outcome.result.fits and s.method == "lora" and preset.constraints.allow_method_change):
            tried_methods.append("qlora")
            q = attempt("qlora", s.seq_len)
            if not q.result.fits:
                q = _shorter(attempt, "qlora", s.seq_len, preset.constraints.min_seq_len) or q
            if q.result.fits or q.result.choice.memory.device_bytes < outcome.result.choice.memory.device_bytes:
                outcome = q  # it fits, or it comes closest (its suggestions are the useful ones)
    if outcome.result.fits and not outcome.result.choice.throughput.tokens_per_second and s.num_gpus == 1:
        # No speed model for this hardware (the CPU, a bare --vram size): the solver cannot rank
        # micro-batches by speed, so keep the preset's micro-batch, or the largest below it that fits.
        chosen = outcome.result.choice.setup
        for mb in sorted((d for d in range(1, effective + 1) if effective % d == 0), reverse=True):
            if mb > max(s.micro_batch, 1) or mb <= chosen.micro_batch:
                continue
            # a bigger micro-batch, not the long-context path (tiled MLP, offloading), buys nothing here
            o = attempt(chosen.method, chosen.seq_len, mb, keep={"offload_activations": chosen.offload_activations,
                                                                 "tiled_mlp": chosen.tiled_mlp,
                                                                 "chunked_norm": chosen.chunked_norm,
                                                                 "offload_embedding": chosen.offload_embedding})
            if o.result.fits:
                outcome = o
                break
    new = outcome.result.choice.setup
    changes = tuple((k, getattr(s, k), getattr(new, k)) for k in SHOWN if getattr(s, k) != getattr(new, k))
    target = target_hardware(preset)
    why_hw = _hardware_reason(target, outcome.hardware)
    first_need = first.result.choice.memory.device_bytes
    budget = first.result.budget_bytes
    if outcome.result.fits:
        if new.method != s.method:
            reasons.append(f"{_METHOD[s.method]} does not fit: it needs at least {_gib(first_need)} and "
                           f"{_gib(budget)} may be used here; {_METHOD[new.method]} keeps the frozen weights in "
                           f"4-bit, so it fits (the method changed; constraints.allow_method_change allows it).")
        if new.seq_len != s.seq_len:
            reasons.append(f"Sequence length {s.seq_len} does not fit even at micro-batch 1 with checkpointing; "
                           f"{new.seq_len} is the longest that does (constraints.min_seq_len "
                           f"{preset.constraints.min_seq_len}): longer examples are truncated.")
        here = _card(outcome.hardware)

        def said(keys: tuple[str, ...]) -> str:
            return ", ".join(f"{SHOWN[k]} {_show(k, a)} -> {_show(k, b)}" for k, a, b in changes if k in keys)

        if said(("compute_dtype",)):
            why = (f"{outcome.hardware.gpu.name} has no bfloat16 (fp16 mixed precision with loss scaling)"
                   if new.compute_dtype == "float16" else f"{outcome.hardware.gpu.name} supports {new.compute_dtype}")
            reasons.append(f"{said(('compute_dtype',))}: {why}.")
        if said(("optimizer",)):
            why = ("32-bit AdamW states do not fit beside the rest" if new.optimizer != "adamw"
                   else "32-bit AdamW states fit")
            reasons.append(f"{said(('optimizer',))}: {why} on {here}.")
        geometry = ("micro_batch", "grad_accum", "grad_checkpointing", "attn", "fused_ce", "offload_activations",
                    "tiled_mlp", "chunked_norm", "offload_embedding")
        if said(geometry):
            if new.method != s.method:
                why_hw = f"the fastest that fits with {_METHOD[new.method]} on {here}"
            reasons.append(f"{said(geometry)}: {why_hw}.")
        if not changes:
            reasons.append(f"Nothing to change: on {here} the planner picks the preset's own configuration.")
        kept = [f"effective batch {new.effective_batch()}"]
        if new.method == s.method:
            kept.append(f"method {_METHOD[s.method]}")
        if new.seq_len == s.seq_len:
            kept.append(f"sequence length {s.seq_len}")
        if s.method != "full":
            kept.append(f"LoRA r{s.lora_rank}/alpha {s.lora_alpha}")
        reasons.append(f"Kept: {', '.join(kept)}. Predicted {_gib(outcome.result.choice.memory.device_bytes)} "
                       f"of {_gib(outcome.result.usable_bytes)} usable.")
    else:
        floor = preset.constraints.min_seq_len or s.seq_len
        for m in tried_methods:
            need = attempt(m, s.seq_len).result.choice.memory.device_bytes
            text = f"{_METHOD[m]} needs at least {_gib(need)} at sequence length {s.seq_len}"
            if floor < s.seq_len:
                text += (f" and {_gib(attempt(m, floor).result.choice.memory.device_bytes)} at {floor} "
                         "(constraints.min_seq_len)")
            reasons.append(f"{text}; {_gib(outcome.result.budget_bytes)} may be used on {_card(outcome.hardware)}.")
        if s.method == "lora" and not preset.constraints.allow_method_change:
            reasons.append("constraints.allow_method_change is false, so QLoRA was not tried.")
        reasons += list(outcome.result.suggestions[1:])
    from tuneplan.config import with_setup

    m = outcome.result.choice.memory
    out = with_setup(config, **{k: getattr(new, k) for k in fields_of(TrainSetup)})
    out = replace(out, prediction=PredictionConfig(torch_peak_bytes=m.torch_peak_bytes, device_bytes=m.device_bytes))
    return Refit(preset=preset, config=out, outcome=outcome, fits=outcome.result.fits, changes=changes,
                 reasons=tuple(reasons), notes=tuple(notes) + tuple(outcome.notes))


def _gpu_count(s: TrainSetup) -> dict[str, Any]:
    """PlanRequest fields that keep a preset's GPU count and strategy (if the planning service
    knows about several GPUs)."""
    from tuneplan.services.planning import PlanRequest

    known = {f.name for f in fields(PlanRequest)}
    out: dict[str, Any] = {}
    if "gpus" in known:
        out["gpus"] = s.num_gpus
    if "strategy" in known and s.num_gpus > 1 and s.strategy in ("ddp", "fsdp"):
        out["strategy"] = s.strategy
    return out


def _shorter(attempt, method: str, seq: int, floor: int | None):
    """The plan with the longest sequence in [floor, seq) that fits (binary search, SEQ_STEP)."""
    if not floor or floor >= seq:
        return None
    lo, hi = -(-floor // SEQ_STEP), (seq - 1) // SEQ_STEP
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        o = attempt(method, max(floor, mid * SEQ_STEP))
        if o.result.fits:
            best, lo = o, mid + 1
        else:
            hi = mid - 1
    return best


def load_preset_config(name: "str | Preset", *, gpu: str | None = None, vram: str | None = None,
                       vram_bytes: int | None = None, gpu_index: int | None = None,
                       safety_margin: float | None = None, echo: bool = True, build_sources: bool = True) -> RunConfig:
    """What `tuneplan train --preset NAME` calls: the preset re-fitted for the hardware at
    hand (or `gpu` / `vram`, a size as text, or `vram_bytes`), as a run configuration with
    bundled sources resolved. Prints the re-fit summary to stderr (`echo`). Raises UserError
    when it cannot fit."""
    from tuneplan.services.planning import parse_size

    preset = find_preset(name) if isinstance(name, str) else name
    if vram:
        vram_bytes = parse_size(vram)
    fit = refit(preset, gpu=gpu, vram_bytes=vram_bytes, gpu_index=gpu_index, safety_margin=safety_margin,
                build_sources=build_sources)
    if echo:
        for line in fit.summary_lines():
            print(f"tuneplan: {line}", file=sys.stderr)
    if not fit.fits:
        raise UserError(f"preset {preset.name} does not fit on {_card(fit.outcome.hardware)}; see the reasons above "
                        f"or `tuneplan plan --preset {preset.name}`")
    return fit.config
