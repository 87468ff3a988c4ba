"""The planning service: what `tuneplan plan` and the wizard's plan screen both call.

    outcome = plan(PlanRequest(model="llama-3.1-8b", gpu="rtx-3060-12gb"))
    outcome.result.fits, outcome.result.choice.setup, outcome.to_dict()

It resolves the model (catalog, local folder or Hub: `tuneplan.services.models`) and the
hardware (a catalog card, a memory size, or the GPUs NVML finds), validates the user's knobs
(one-line `UserError`s), and runs the pure solver (`planner.solver.solve`). UI-free and fast:
no textual, no torch; the model resolution may touch the network for Hub ids only.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from planner.gpus import GPU, PRICES_AS_OF, GiB, UnknownGPU, get_gpu
from planner.setup import COMPONENTS, METHODS, TrainSetup
from planner.solver import (
    DEFAULT_SAFETY_MARGIN,
    Candidate,
    Constraints,
    DatasetStats,
    Hardware,
    PlanResult,
    solve,
)
from planner.throughput import estimate_throughput, trainable_parameters, training_cost, training_seconds
from tuneplan.config import MAX_COUNT, MAX_EPOCHS
from tuneplan.errors import UserError

from tuneplan.knobs import FIXABLE, LORA_KNOBS, QLORA_KNOBS  # noqa: F401  (re-exported)
from tuneplan.knobs import BY_NAME, effective_batch
from tuneplan.knobs import FLAGS as _FLAGS
from tuneplan.knobs import parse_targets  # noqa: F401  (re-exported: one reading of --lora-targets)
STRATEGY_CHOICES = ("auto", "ddp", "fsdp")
MAX_GPUS = 100_000
"""More GPUs than the largest published training clusters (~100k H100s) is a typo; the
planner's per-GPU arithmetic stays exact below it."""
MAX_MEMORY_BYTES = 2**50
"""1 PiB: a thousand times the largest accelerator memory (B200: 192 GB); more is a typo."""
MAX_TOKENS = 10**15
"""Dataset tokens: a thousand times the largest published pre-training corpora (~1e13)."""


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan needs. Give `model` (a reference) or `resolved` (already resolved)."""

    model: str | None = None
    """Catalog name, local folder or Hub id."""
    resolved: Any = None
    """A `tuneplan.services.models.ResolvedModel` the caller already has (the wizard)."""
    gpu: str | None = None
    """Catalog GPU name (loose: `4090`, `a100-80`)."""
    vram_bytes: int | None = None
    """Memory to plan for, in bytes (with `gpu`: that card with this much free)."""
    hardware: Hardware | None = None
    """Hardware the caller already built (the wizard, from NVML)."""
    gpu_index: int | None = None
    """Which NVML GPU to plan for when neither `gpu` nor `vram_bytes` is given (None: most free)."""
    method: str = "auto"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """TrainSetup knob -> value the user fixed (see FIXABLE)."""
    effective_batch: int | None = None
    """Sequences per optimizer step (None: micro_batch x grad_accum if both fixed, else 16)."""
    epochs: float = 1.0
    dataset: DatasetStats | None = None
    dataset_source: str | None = None
    """A local data file or Hub dataset id to measure (when `dataset` is not given): token
    lengths come from `tuneplan.services.dataset_preview` with the model's tokenizer."""
    prefer_accuracy: bool = False
    safety_margin: float = DEFAULT_SAFETY_MARGIN
    price_per_hour: float | None = None
    min_seq_len: int | None = None
    max_seq_len: int | None = None
    token: str | None = None
    """Hub token for gated repos (passed through, never stored)."""
    gpus: int | None = None
    """GPUs to train on; None (`--gpus auto`): one catalog card / memory size (more cards are
    suggested when it does not fit; with a multi-GPU `strategy`, the fewest that hold it in one
    machine), or all the GPUs of one model NVML finds."""
    strategy: str = "auto"
    """`auto`, `ddp` or `fsdp` (several GPUs)."""
    cpu_offload: bool = False
    """FSDP CPU offload (weights, gradients, optimizer in host memory)."""
    gpus_per_node: int = 8
    """GPUs per machine: more GPUs than this span several machines (planned on paper)."""
    measured: Any = None
    """A bake-off's measured quality (`planner.bakeoff.BakeoffResult`) for the solver to weigh
    and explain. None: the newest finished `tuneplan compare` of this model and `dataset_source`
    under the runs root, if there is one (`find_measured`)."""
    seq_len_max: bool = False
    """`--seq-len max`: the longest sequence that fits, the other knobs held (docs/long-context.md)."""
    host_ram_bytes: int | None = None
    """Host RAM the offloaded activations may use, in bytes (`--host-ram`); None: this machine's
    available RAM (psutil) when planning for the GPUs NVML finds here, else unknown."""


@dataclass(frozen=True)
class PlanOutcome:
    """A plan with what it was made for."""

    request: PlanRequest
    model: Any
    """The `ResolvedModel`."""
    hardware: Hardware
    result: PlanResult
    notes: tuple[str, ...] = ()
    """Remarks about the inputs (model notes, which NVML GPU was used, ...)."""
    detected_gpus: int = 0
    """GPUs NVML found (0 when the hardware came from --gpu / --vram)."""

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object (schema documented in docs/planning.md)."""
        return plan_to_dict(self)


# -- parsing helpers shared by the CLI and the UI ---------------------------------------------
_SIZE = re.compile(r"^\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))\s*([kmgt]i?b?|b)?\s*$", re.I)
_UNITS = {"": GiB, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": GiB, "gb": GiB, "gib": GiB, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}
"""GPU memory is sold in binary units written as decimal ones (a "24GB" RTX 4090 has 24 GiB,
an "80GB" A100 has 80 GiB: `nvidia-smi` shows 24564 MiB and 81920 MiB), so KB/MB/GB/TB read
as KiB/MiB/GiB/TiB here, and `size_note` says so."""


def looks_like_size(text: str) -> bool:
    """Whether `text` is shaped like a memory size (`24`, `24GB`, `-5GiB`, `0GiB`), valid or not."""
    return bool(_SIZE.match(str(text)))


def parse_size(text: str, what: str = "--vram") -> int:
    """`24GiB`, `24GB`, `24G`, `24` (GiB), `24576MiB` -> bytes (GB read as GiB: see _UNITS).
    Raises a one-line UserError for anything else, and for sizes that are not > 0."""
    m = _SIZE.match(str(text))
    if not m:
        raise UserError(f"{what} must be a size such as 24GiB, 80GB or 24576MiB (got {text!r})")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not value > 0:
        raise UserError(f"{what} must be > 0 (got {text!r}): give the GPU's memory, e.g. 24GiB")
    if value > MAX_MEMORY_BYTES:
        raise UserError(f"{what} must be at most 1 PiB (got {text[:40]!r})")
    return int(value)


def size_note(text: str, what: str = "--vram") -> str | None:
    """A note when `text` used a decimal-looking unit (GB, MB, ...): how it was read."""
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else ""
    if m is None or unit not in ("kb", "mb", "gb", "tb"):
        return None
    binary = unit[0].upper() + "iB"
    return (f"{what} {text.strip()} read as {float(m.group(1)):g} {binary}: GPU makers' {unit.upper()} are "
            f"{binary} (a 24GB card has 24 GiB); write the bytes (e.g. 24000000000B) for decimal units")


# -- hardware ------------------------------------------------------------------------------
def resolve_gpu(name: str, *, vram_given: bool = False) -> GPU:
    """Catalog lookup that fails as a one-line UserError with suggestions."""
    try:
        return get_gpu(name)
    except UnknownGPU as exc:
        hint = f"did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else "e.g. rtx-4090, a100-80gb, h100"
        other = ("drop --gpu to plan for --vram alone (no speed figures)" if vram_given
                 else "or give its memory with --vram 24GiB")
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name):,} characters)"
        raise UserError(f"unknown GPU {shown}: {hint} ({other})") from None


def _generic_gpu(vram: int, bf16: bool = True) -> GPU:
    gib = vram / GiB
    return GPU(key="custom", name=f"a {gib:.4g} GiB GPU", memory_bytes=vram, bf16=bf16, arch="unknown")


def resolve_hardware(gpu: str | None = None, vram_bytes: int | None = None, index: int | None = None, *,
                     gpus: int | None = None, bf16: bool = True, probe: Any = None) -> tuple[Hardware, list[str], int]:
    """The Hardware to plan for, notes about it, and how many GPUs NVML found. `gpu`: a catalog
    card; `vram_bytes`: a memory size (with `gpu`: free on that card; `bf16`: whether the bare
    size is taken to support bfloat16); neither: the GPUs NVML finds (`index`: that one; else the
    one with the most free memory, with the others of its model unless `gpus` is 1)."""
    if gpu:
        card = resolve_gpu(gpu, vram_given=vram_bytes is not None)
        if vram_bytes is not None:
            if vram_bytes > card.memory_bytes:
                raise UserError(f"--vram {vram_bytes / GiB:.1f} GiB is more than the {card.name}'s "
                                f"{card.memory_bytes / GiB:.1f} GiB")
            return Hardware(gpu=card, free_bytes=vram_bytes, source="vram"), [], 0
        return Hardware(gpu=card, source="catalog"), [], 0
    if vram_bytes is not None:
        notes = ["Speed, time and cost need a GPU model: add --gpu NAME for them."]
        return Hardware(gpu=_generic_gpu(vram_bytes, bf16), source="vram"), notes, 0
    if probe is None:
        from tuneplan.services.gpu import default_probe

        probe = default_probe()
    found = probe.probe()
    if not found:
        raise UserError(f"no GPU to plan for: {probe.status()}; name a card with --gpu (e.g. --gpu rtx-4090) "
                        "or a memory size with --vram 24GiB")
    if index is not None:
        chosen = next((g for g in found if g.index == index), None)
        if chosen is None:
            raise UserError(f"--gpu-index {index}: NVML sees GPUs {', '.join(str(g.index) for g in found)}")
    else:
        chosen = max(found, key=lambda g: g.free_bytes)
    notes = [f"Planning for GPU {chosen.index} ({chosen.name}) as NVML sees it: "
             f"{chosen.free_bytes / GiB:.1f} of {chosen.total_bytes / GiB:.1f} GiB free."]
    # several GPUs of the same model (and no --gpu-index): the plan may use all of them, each
    # with the least free memory among them
    same = [g for g in found if g.name == chosen.name and g.total_bytes == chosen.total_bytes]
    if index is not None or gpus == 1:
        same = [chosen]
    if len(same) > 1:
        free = min(g.free_bytes for g in same)
        notes[0] = (f"Planning for the {len(same)} x {chosen.name} NVML sees (GPUs "
                    f"{', '.join(str(g.index) for g in same)}): at least {free / GiB:.1f} of "
                    f"{chosen.total_bytes / GiB:.1f} GiB free on each.")
        if len(same) < len(found):
            notes.append(f"NVML found {len(found)} GPUs; the plan uses the {len(same)} of one model.")
    else:
        free = chosen.free_bytes
        if len(found) > 1:
            notes.append(f"NVML found {len(found)} GPUs; the plan uses GPU {chosen.index}.")
    if chosen.catalog is None:
        notes.append(f"{chosen.name} is not in the GPU catalog: no speed, time or cost estimate.")
    hw = Hardware(gpu=chosen.as_planner_gpu(), count=len(same), free_bytes=free, source="nvml")
    return hw, notes, len(found)


# -- validation ----------------------------------------------------------------------------
def _check_positive(name: str, value: Any, flag: str, hi: float = MAX_COUNT) -> None:
    if value is None:
        return
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a finite number > 0 (got {value})")
    if value > hi:
        raise UserError(f"{flag} must be at most {_number(hi)} (got {_number(value)})")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def validate(request: PlanRequest, spec: Any) -> None:
    """Raise a one-line UserError for bad or contradictory input."""
    fixed = dict(request.fixed)
    unknown = set(fixed) - set(FIXABLE)
    if unknown:
        raise UserError(f"cannot fix {', '.join(sorted(unknown))}: fixable knobs are {', '.join(FIXABLE)}")
    if request.method not in ("auto", *METHODS):
        raise UserError(f"--method must be auto, lora, qlora or full (got {request.method!r})")
    for key, value in fixed.items():  # each knob's rule, as the config files have it (`tuneplan.knobs`)
        why = BY_NAME[key].problem(value)
        if why:
            raise UserError(f"{_FLAGS[key]} {why} (got {value!r})")
    for name, value in (("--effective-batch", request.effective_batch), ("--epochs", request.epochs),
                        ("--price", request.price_per_hour), ("--min-seq-len", request.min_seq_len),
                        ("--max-seq-len", request.max_seq_len)):
        if value is not None and name == "--price" and value == 0:
            continue  # a free card (your own) is fine
        _check_positive(name, value, name, hi=MAX_EPOCHS if name == "--epochs" else MAX_COUNT)
    if not 0 <= request.safety_margin < 0.9:
        raise UserError(f"--safety-margin must be between 0 and 0.9 (got {request.safety_margin})")
    if request.gpus is not None and (not isinstance(request.gpus, int) or isinstance(request.gpus, bool)
                                     or not 0 < request.gpus <= MAX_GPUS):
        raise UserError(f"--gpus must be auto or a whole number in [1, {MAX_GPUS}] (got {request.gpus})")
    if request.strategy not in STRATEGY_CHOICES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGY_CHOICES)} (got {request.strategy!r})")
    if not 0 < request.gpus_per_node <= MAX_GPUS:
        raise UserError(f"--gpus-per-node must be in [1, {MAX_GPUS}] (got {request.gpus_per_node})")
    for name, stats in (("--dataset-tokens", request.dataset and request.dataset.total_tokens),
                        ("--p99-len", request.dataset and request.dataset.p99_tokens)):
        _check_positive(name, stats, name, hi=MAX_TOKENS)
    if request.cpu_offload and request.strategy == "ddp":
        raise UserError("--cpu-offload needs --strategy fsdp (DDP keeps a full replica on every GPU)")
    if fixed.get("offload_activations") and fixed.get("grad_checkpointing") is False:
        raise UserError("--offload-activations on needs gradient checkpointing (it offloads the checkpointed "
                        "layer inputs): drop --grad-checkpointing off, or --offload-activations off")
    if request.seq_len_max and fixed.get("seq_len") is not None:
        raise UserError("--seq-len is both a number and max: give one")
    if request.host_ram_bytes is not None and request.host_ram_bytes <= 0:
        raise UserError(f"--host-ram must be > 0 (got {request.host_ram_bytes})")
    if request.gpus == 1 and request.strategy == "ddp":
        raise UserError("--strategy ddp needs --gpus 2 or more (one GPU has nothing to replicate to)")
    # contradictions
    if request.method == "full":
        given = [_FLAGS[k] for k in LORA_KNOBS + QLORA_KNOBS if k in fixed]
        if given:
            raise UserError(f"--method full trains every weight: {', '.join(given)} only "
                            f"{'applies' if len(given) == 1 else 'apply'} to LoRA/QLoRA")
    if request.method == "lora":
        given = [_FLAGS[k] for k in QLORA_KNOBS if k in fixed]
        if given:
            raise UserError(f"--method lora keeps a 16-bit base: {', '.join(given)} only "
                            f"{'applies' if len(given) == 1 else 'apply'} to --method qlora")
    mb, ga, eff = fixed.get("micro_batch"), fixed.get("grad_accum"), request.effective_batch
    if mb and ga and eff and mb * ga != eff:
        raise UserError(f"--batch {mb} x --grad-accum {ga} = {mb * ga}, not --effective-batch {eff}: drop one of them")
    if eff and mb and eff % mb:
        raise UserError(f"--effective-batch {eff} is not a multiple of --batch {mb}")
    if eff and ga and eff % ga:
        raise UserError(f"--effective-batch {eff} is not a multiple of --grad-accum {ga}")
    lo, hi = request.min_seq_len, request.max_seq_len
    if lo and hi and lo > hi:
        raise UserError(f"--min-seq-len {lo} is above --max-seq-len {hi}")
    seq = fixed.get("seq_len")
    if seq and ((lo and seq < lo) or (hi and seq > hi)):
        raise UserError(f"--seq-len {seq} is outside --min-seq-len/--max-seq-len ({lo or '-'}..{hi or '-'})")
    targets = fixed.get("lora_targets")
    if targets is not None:
        from planner.spec import resolve_lora_targets

        try:
            resolve_lora_targets(spec, targets)
        except ValueError as exc:
            raise UserError(str(exc)) from None


# -- the service ---------------------------------------------------------------------------
def resolve(request: PlanRequest) -> Any:
    """The ResolvedModel of the request (catalog, folder or Hub)."""
    if request.resolved is not None:
        return request.resolved
    if not request.model:
        raise UserError("no model given: --model NAME (a catalog name such as llama-3.1-8b, a Hub id or a folder)")
    from tuneplan.services.models import resolve_model

    return resolve_model(request.model, token=request.token)


def dataset_stats(source: str, model: Any) -> tuple[DatasetStats, list[str]]:
    """Token statistics of a dataset file / Hub dataset, measured with the model's tokenizer
    where obtainable (else ~4 characters per token, said in the notes)."""
    from tuneplan.services.dataset_preview import RealHubFiles, preview_dataset

    preview = preview_dataset(source, model_source=model.source, hub=RealHubFiles())
    t = preview.tokens
    if t is None:  # preview_dataset refuses an empty dataset first; a preview always measures rows
        raise UserError(f"{source}: no example to measure")
    notes = [f"Dataset {source}: {preview.format} format, token lengths by {t.method}."] + list(preview.notes)
    total = t.total_tokens
    if preview.num_examples and t.count and preview.num_examples > t.count:
        total = int(t.total_tokens * preview.num_examples / t.count)  # measured rows scaled to the file
    return DatasetStats(num_examples=preview.num_examples, total_tokens=total, p50_tokens=t.p50,
                        p99_tokens=t.p99, max_tokens=t.max), notes


def plan(request: PlanRequest, *, probe: Any = None) -> PlanOutcome:
    """Resolve, validate and solve. Raises UserError for bad input (one line)."""
    model = resolve(request)
    spec = model.spec
    validate(request, spec)
    request, cpu_notes = _bundled_tiny_on_cpu(request, model, probe)
    notes: list[str]
    if request.hardware is not None:
        hardware, notes, detected = request.hardware, [], 0
    else:
        hardware, notes, detected = resolve_hardware(request.gpu, request.vram_bytes, request.gpu_index,
                                                     gpus=request.gpus,
                                                     bf16=request.fixed.get("compute_dtype") != "float16", probe=probe)
    notes = cpu_notes + notes
    if hardware.source == "nvml" and request.gpus is not None and request.gpus > hardware.count:
        raise UserError(f"--gpus {request.gpus}: NVML sees {hardware.count} x {hardware.gpu.name} here; plan for "
                        f"another machine with --gpu {hardware.gpu.key if hardware.gpu.key != 'custom' else 'NAME'}")
    if request.dataset is None and request.dataset_source:
        stats, data_notes = dataset_stats(request.dataset_source, model)
        request = replace(request, dataset=stats)
        notes = notes + data_notes
    fixed = dict(request.fixed)
    effective = effective_batch(fixed.get("micro_batch"), fixed.get("grad_accum"), request.effective_batch)
    # --gpus auto on a catalog card / memory size: one card (who names a card has one card;
    # more cards come back as a suggestion), unless a multi-GPU strategy was asked for: then as
    # many GPUs as one machine holds, fewest first
    gpus, max_gpus = request.gpus, None
    if gpus is None and hardware.source != "nvml":
        if request.strategy == "auto":
            gpus = 1
        else:
            max_gpus = request.gpus_per_node
    host_ram = request.host_ram_bytes
    if host_ram is None and hardware.source == "nvml":
        # the plan is for this machine: its offloaded activations live in this machine's RAM
        from tuneplan.services.gpu import ram_bytes

        try:
            host_ram = ram_bytes()[1]
        except (ImportError, OSError):
            host_ram = None
    constraints = Constraints(
        method=request.method, fixed=fixed, min_seq_len=request.min_seq_len, max_seq_len=request.max_seq_len,
        effective_batch=effective, epochs=request.epochs, prefer_accuracy=request.prefer_accuracy,
        safety_margin=request.safety_margin, price_per_hour=request.price_per_hour,
        gpus=gpus, strategy=request.strategy, cpu_offload=request.cpu_offload, max_gpus=max_gpus,
        gpus_per_node=request.gpus_per_node, seq_len_max=request.seq_len_max, host_ram_bytes=host_ram,
    )
    measured = request.measured if request.measured is not None else find_measured(request)
    if measured is not None:
        constraints = replace(constraints, measured=measured)
    tiny_full = request.method == "auto" and is_bundled_tiny(model)
    if tiny_full:
        constraints = replace(constraints, method="full")
    try:
        result = solve(spec, hardware, constraints, request.dataset)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if tiny_full:  # the solver heard "full" from us, not from the user
        why = ("Full fine-tuning: the bundled tiny model's weights are random, and LoRA on a random frozen base "
               "barely learns (--method lora to override).")
        result = replace(result, reasons=tuple(why if x.lower().startswith("full fine-tuning as asked") else x
                                               for x in result.reasons))
    all_notes = tuple(notes) + tuple(getattr(model, "notes", ()) or ())
    return PlanOutcome(request=request, model=model, hardware=hardware, result=result, notes=all_notes,
                       detected_gpus=detected)


def find_measured(request: PlanRequest) -> Any:
    """The newest finished bake-off (`tuneplan compare`) of the request's model and dataset in
    the runs root ($TUNEPLAN_RUNS_DIR or the per-user folder); None when there is none or the
    runs root cannot be read (a plan never fails for it)."""
    if not request.model or not request.dataset_source:
        return None
    from tuneplan.services import compare, paths

    try:
        return compare.find_bakeoff(paths.runs_root(), request.model, request.dataset_source)
    except (UserError, OSError):
        return None


def _bundled_tiny_on_cpu(request: PlanRequest, model: Any, probe: Any = None) -> tuple[PlanRequest, list[str]]:
    """No GPU here and no card named: the bundled tiny model is planned for this machine's CPU,
    where `tuneplan train` runs it (any other model needs a GPU or a --gpu/--vram target)."""
    if (request.hardware is not None or request.gpu or request.vram_bytes is not None
            or request.gpu_index is not None or not is_bundled_tiny(model)):
        return request, []
    from tuneplan.services.gpu import cpu_hardware, default_probe

    probe = default_probe() if probe is None else probe
    if probe.probe():
        return request, []
    hw = cpu_hardware()
    return replace(request, hardware=hw), [f"No GPU found ({probe.status()}): planning for this machine's CPU, "
                                           f"{hw.free_bytes / GiB:.1f} GiB of RAM available, as `tuneplan train` "
                                           "runs the bundled tiny model here."]


def is_bundled_tiny(model: Any) -> bool:
    """Whether a resolved model is the bundled tiny one (random weights: full fine-tuning, CPU-friendly)."""
    from tuneplan.services.models import is_bundled_tiny as tiny_config

    config = getattr(model, "config", None)
    return isinstance(config, Mapping) and tiny_config(config)


def estimate(spec: Any, hardware: Hardware, setup: TrainSetup, *, dataset_tokens: int | None = None,
             epochs: float = 1.0, price_per_hour: float | None = None,
             safety_margin: float = DEFAULT_SAFETY_MARGIN) -> dict[str, Any]:
    """One configuration's memory, speed, time and cost (for knobs edited by hand in the UI)."""
    from planner.parallel import estimate_parallel_memory

    try:
        memory = estimate_parallel_memory(spec, setup, hardware.gpu)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    speed = estimate_throughput(spec, setup, hardware.gpu)
    usable = hardware.usable_bytes()
    budget = int(usable * (1 - safety_margin))
    secs = training_seconds(speed.tokens_per_second, dataset_tokens, epochs) if dataset_tokens else None
    price = price_per_hour if price_per_hour is not None else hardware.gpu.price_per_hour
    return {"memory": memory, "throughput": speed, "fits": memory.device_bytes <= budget, "usable_bytes": usable,
            "budget_bytes": budget, "seconds": secs, "cost": training_cost(secs, price, setup.num_gpus)}


# -- JSON ----------------------------------------------------------------------------------
def config_dict(setup: TrainSetup) -> dict[str, Any]:
    """Every knob of `setup`, JSON-ready (tuples become lists), plus the effective batch."""
    d = asdict(setup)
    if isinstance(d["lora_targets"], tuple):
        d["lora_targets"] = list(d["lora_targets"])
    d["effective_batch"] = setup.effective_batch()
    return d


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    return {
        "summary": c.describe(),
        "config": config_dict(c.setup),
        "memory": {"torch_peak_bytes": c.memory.torch_peak_bytes, "device_bytes": c.memory.device_bytes},
        "tokens_per_second": c.throughput.tokens_per_second,
    }


def plan_to_dict(o: PlanOutcome) -> dict[str, Any]:
    """The `--json` object. Bytes are integers; absent figures are null."""
    r = o.result
    c = r.choice
    spec = o.model.spec
    gpu = o.hardware.gpu
    return {
        "fits": r.fits,
        "model": {
            "name": o.model.name, "source": o.model.source, "kind": o.model.kind,
            "architecture": spec.model_type, "parameters": spec.parameter_count(),
            "trainable_parameters": trainable_parameters(spec, c.setup),
            "context_length": spec.max_position_embeddings,
        },
        "config": config_dict(c.setup),
        "fixed": sorted(o.request.fixed) + (["method"] if o.request.method != "auto" else []),
        "memory": {
            "torch_peak_bytes": c.memory.torch_peak_bytes,
            "device_bytes": c.memory.device_bytes,
            "components": {k: int(c.memory.components.get(k, 0)) for k in COMPONENTS},
            "usable_bytes": r.usable_bytes,
            "budget_bytes": r.budget_bytes,
            "headroom_bytes": r.headroom_bytes(),
            "safety_margin": o.request.safety_margin,
            "host_activation_bytes": int(c.memory.details.get("host_activation_bytes", 0)),
            "host_embedding_bytes": int(c.memory.details.get("host_embedding_bytes", 0)),
            "host_bytes": c.memory.host_bytes(),
            "host_ram_bytes": r.host_ram_bytes,
            "notes": list(c.memory.notes),
        },
        "gpu": {
            "name": gpu.name, "key": gpu.key if gpu.key != "custom" else None, "memory_bytes": gpu.memory_bytes,
            "free_bytes": o.hardware.free_bytes, "count": c.setup.num_gpus,
            "detected": o.detected_gpus if o.hardware.source == "nvml" else None,
            "bf16": gpu.bf16, "source": o.hardware.source,
        },
        "parallel": {
            "num_gpus": c.setup.num_gpus, "strategy": c.setup.strategy, "nodes": r.nodes,
            "gpus_per_node": o.request.gpus_per_node, "cpu_offload": r.cpu_offload,
            "host_offload_bytes": int(c.memory.details.get("host_offload_bytes", 0)),
            "communication_seconds_per_micro_batch": c.throughput.parts.get("communication"),
            "single_gpu_need_bytes": r.single_gpu_need_bytes,
            "memory_is_per_gpu": True,
        },
        "throughput": {
            "tokens_per_second": c.throughput.tokens_per_second,
            "optimizer_step_seconds": c.throughput.optimizer_step_seconds,
            "mfu": c.throughput.mfu, "bound": c.throughput.bound,
        },
        "time": {"dataset_tokens": r.dataset_tokens, "dataset_tokens_assumed": r.dataset_tokens_assumed,
                 "epochs": r.epochs, "seconds": r.seconds},
        "cost": {"usd": r.cost, "price_per_hour": r.price_per_hour, "prices_as_of": PRICES_AS_OF},
        "alternatives": [_candidate_dict(a) for a in r.alternatives],
        "reasons": list(r.reasons),
        "warnings": list(r.warnings),
        "suggestions": list(r.suggestions),
        "notes": list(o.notes),
    }
