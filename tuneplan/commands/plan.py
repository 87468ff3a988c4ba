"""`tuneplan plan`: a dry run. Picks the fastest configuration that fits and explains it.

A knob given on the command line is fixed; a knob left out is chosen by the solver. Exit
codes: 0 it fits, 1 it does not fit (with what would make it fit), 2 bad input (one line on
stderr). No torch, no textual: the planner is pure Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

AUTO = "auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Values are validated in run() (one-line errors, exit 2), not by argparse's choices.
    def one_line_error(message: str) -> None:
        print(f"tuneplan: error: plan: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = one_line_error  # type: ignore[method-assign]
    a = parser.add_argument
    a("--model", "-m", metavar="M", help="catalog name (llama-3.1-8b), Hub id (owner/name) or local folder")
    a("--gpu", metavar="NAME", help="plan for this card from the catalog (4090, a100-80gb, h100, ...)")
    a("--vram", metavar="SIZE", help="plan for this much GPU memory (24GiB, 80GB, 24576MiB); with --gpu: free memory")
    a("--gpu-index", metavar="N", help="with neither --gpu nor --vram: which NVML GPU (default: the one with most free memory)")
    a("--gpus", default=AUTO, metavar="auto|N", help="GPUs to train on (default auto: one --gpu/--vram card, more "
      "cards suggested when it does not fit; with NVML, all GPUs of one model in the box)")
    a("--strategy", default=AUTO, metavar="auto|ddp|fsdp", help="multi-GPU strategy (default auto: DDP when a "
      "replica fits one GPU, else FSDP)")
    a("--cpu-offload", default="off", metavar="on|off", help="FSDP CPU offload of weights, gradients, optimizer")
    a("--gpus-per-node", metavar="N", help="GPUs per machine (default 8); more --gpus span several machines")
    a("--method", default=AUTO, metavar="auto|lora|qlora|full", help="training method (default: auto, LoRA or QLoRA)")
    a("--seq-len", metavar="N", help="tokens per sequence (default: dataset p99 or 2048)")
    a("--batch", metavar="N", help="micro-batch: sequences per forward/backward")
    a("--grad-accum", metavar="N", help="micro-batches per optimizer step")
    a("--effective-batch", metavar="N", help="sequences per optimizer step, kept constant (default 16)")
    a("--lora-r", metavar="N", help="LoRA rank (default 16)")
    a("--lora-alpha", metavar="N", help="LoRA alpha (default 32)")
    a("--lora-dropout", metavar="X", help="LoRA dropout (default 0.05)")
    a("--lora-targets", metavar="T", help="attention | all-linear | q_proj,v_proj,... (default all-linear)")
    a("--grad-checkpointing", default=AUTO, metavar="auto|on|off", help="activation checkpointing (default: auto)")
    a("--optimizer", default=AUTO, metavar="auto|adamw|adamw-8bit|paged-adamw-8bit|paged-adamw-32bit")
    a("--attn", default=AUTO, metavar="auto|sdpa|flash|eager", help="attention implementation (default: sdpa)")
    a("--fused-ce", default=AUTO, metavar="auto|on|off", help="fused linear cross-entropy (default: on)")
    a("--dtype", default=AUTO, metavar="auto|bf16|fp16", help="compute dtype (default: bf16 where supported)")
    a("--quant-type", metavar="nf4|fp4", help="QLoRA 4-bit format (default nf4)")
    a("--double-quant", metavar="on|off", help="QLoRA double quantization (default on)")
    a("--dataset", metavar="PATH|ID", help="a .jsonl/.json/.csv/.parquet file or Hub dataset id: measures example "
      "lengths (sequence length = p99) and tokens per epoch (time, cost)")
    a("--dataset-tokens", metavar="N", help="tokens in one epoch of your dataset, for time and cost (default 10M)")
    a("--p99-len", metavar="N", help="99th-percentile example length in tokens (sets the default sequence length)")
    a("--epochs", metavar="X", help="epochs (default 1)")
    a("--min-seq-len", metavar="N", help="shortest sequence length to consider when suggesting shorter ones")
    a("--max-seq-len", metavar="N", help="cap on the sequence length taken from the dataset")
    a("--prefer-accuracy", action="store_true", help="full fine-tuning first if it fits; no truncation")
    a("--safety-margin", metavar="X",
      help="fraction of usable memory kept free (default 0.09: the memory model's measured error, planner/margins.py)")
    a("--price", metavar="USD", help="price per GPU-hour for the cost (default: catalog price)")
    a("--json", action="store_true", help="print one JSON object instead of the table")
    a("--preset", metavar="NAME", help="re-fit a preset to --gpu/--vram or this machine (see `tuneplan presets`)")


# -- argument conversion (one-line UserErrors) -------------------------------------------------
def _int(value: str | None, flag: str) -> int | None:
    from tuneplan.errors import UserError

    if value is None:
        return None
    try:
        n = int(str(value).replace("_", ""))
    except ValueError:
        raise UserError(f"{flag} must be a whole number (got {value!r})") from None
    if n <= 0:
        raise UserError(f"{flag} must be > 0 (got {n})")
    return n


def _float(value: str | None, flag: str, *, allow_zero: bool = False) -> float | None:
    from tuneplan.errors import UserError

    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        raise UserError(f"{flag} must be a number (got {value!r})") from None
    if x < 0 or (x == 0 and not allow_zero) or x != x:
        raise UserError(f"{flag} must be > 0 (got {value})")
    return x


def _tri(value: str, flag: str) -> bool | None:
    from tuneplan.errors import UserError

    v = value.lower()
    if v == AUTO:
        return None
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise UserError(f"{flag} must be auto, on or off (got {value!r})")


def _choice(value: str, flag: str, allowed: tuple[str, ...]) -> str | None:
    from tuneplan.errors import UserError

    v = value.lower()
    if v == AUTO:
        return None
    if v not in allowed:
        raise UserError(f"{flag} must be one of auto, {', '.join(allowed)} (got {value!r})")
    return v


def build_request(args: argparse.Namespace):
    """argparse namespace -> PlanRequest (raises UserError on bad values)."""
    from planner.setup import OPTIMIZERS
    from planner.solver import DEFAULT_SAFETY_MARGIN, DatasetStats
    from tuneplan.errors import UserError
    from tuneplan.services.planning import PlanRequest, parse_size, parse_targets

    if not args.model:
        raise UserError("no model given: --model NAME (a catalog name such as llama-3.1-8b, a Hub id or a folder)")
    method = args.method.lower()
    if method not in (AUTO, "lora", "qlora", "full"):
        raise UserError(f"--method must be auto, lora, qlora or full (got {args.method!r})")
    fixed: dict[str, Any] = {}

    def put(key, value):
        if value is not None:
            fixed[key] = value

    put("seq_len", _int(args.seq_len, "--seq-len"))
    put("micro_batch", _int(args.batch, "--batch"))
    put("grad_accum", _int(args.grad_accum, "--grad-accum"))
    put("lora_rank", _int(args.lora_r, "--lora-r"))
    put("lora_alpha", _int(args.lora_alpha, "--lora-alpha"))
    if args.lora_dropout is not None:
        d = _float(args.lora_dropout, "--lora-dropout", allow_zero=True)
        if d >= 1:
            raise UserError(f"--lora-dropout must be in [0, 1) (got {args.lora_dropout})")
        fixed["lora_dropout"] = d
    if args.lora_targets is not None:
        fixed["lora_targets"] = parse_targets(args.lora_targets)
    put("grad_checkpointing", _tri(args.grad_checkpointing, "--grad-checkpointing"))
    put("fused_ce", _tri(args.fused_ce, "--fused-ce"))
    put("optimizer", _choice(args.optimizer, "--optimizer", OPTIMIZERS))
    put("attn", _choice(args.attn, "--attn", ("sdpa", "flash", "eager")))
    dtype = _choice(args.dtype, "--dtype", ("bf16", "fp16", "bfloat16", "float16"))
    if dtype:
        fixed["compute_dtype"] = {"bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
    if args.quant_type is not None:
        put("quant_type", _choice(args.quant_type, "--quant-type", ("nf4", "fp4")))
    if args.double_quant is not None:
        dq = _tri(args.double_quant, "--double-quant")
        if dq is None:
            raise UserError("--double-quant must be on or off")
        fixed["double_quant"] = dq

    tokens = _int(args.dataset_tokens, "--dataset-tokens")
    p99 = _int(args.p99_len, "--p99-len")
    dataset = DatasetStats(total_tokens=tokens, p99_tokens=p99) if (tokens or p99) else None
    if args.dataset is not None and dataset is not None:
        raise UserError("--dataset measures lengths and tokens itself: drop --dataset-tokens/--p99-len, or --dataset")
    margin = _float(args.safety_margin, "--safety-margin", allow_zero=True)
    gpu_index = None
    if args.gpu_index is not None:
        try:
            gpu_index = int(args.gpu_index)
        except ValueError:
            raise UserError(f"--gpu-index must be a whole number (got {args.gpu_index!r})") from None
        if args.gpu or args.vram:
            raise UserError("--gpu-index picks an NVML GPU: drop --gpu/--vram, or drop --gpu-index")
    if args.gpu is not None and not args.gpu.strip():
        raise UserError("--gpu is empty: name a card such as rtx-4090 or a100-80gb")
    gpus = None if str(args.gpus).lower() == AUTO else _int(args.gpus, "--gpus")
    strategy = str(args.strategy).lower()
    if strategy not in (AUTO, "ddp", "fsdp"):
        raise UserError(f"--strategy must be one of auto, ddp, fsdp (got {args.strategy!r})")
    offload = _tri(args.cpu_offload, "--cpu-offload")
    return PlanRequest(
        model=args.model, gpu=args.gpu, vram_bytes=parse_size(args.vram) if args.vram is not None else None,
        gpu_index=gpu_index, method=method, fixed=fixed, dataset_source=args.dataset,
        effective_batch=_int(args.effective_batch, "--effective-batch"),
        epochs=_float(args.epochs, "--epochs") or 1.0, dataset=dataset, prefer_accuracy=args.prefer_accuracy,
        safety_margin=DEFAULT_SAFETY_MARGIN if margin is None else margin,
        price_per_hour=_float(args.price, "--price", allow_zero=True),
        min_seq_len=_int(args.min_seq_len, "--min-seq-len"), max_seq_len=_int(args.max_seq_len, "--max-seq-len"),
        gpus=gpus, strategy=strategy, cpu_offload=bool(offload),
        gpus_per_node=_int(args.gpus_per_node, "--gpus-per-node") or 8,
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "preset", None):  # presets issue: the re-fit lives in tuneplan.commands.presets
        from tuneplan.commands.presets import plan_with_preset

        return plan_with_preset(args)
    from tuneplan.errors import EXIT_DOES_NOT_FIT, EXIT_OK
    from tuneplan.services.planning import plan

    from tuneplan.commands.terminal import fill, output_width

    request = build_request(args)
    outcome = plan(request)
    r = outcome.result
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print(render(outcome, output_width()))
    err_width = output_width(sys.stderr)
    from tuneplan.services.planning import size_note

    note = size_note(args.vram) if args.vram else None
    if note:
        print(fill(f"tuneplan plan: note: {note}", err_width), file=sys.stderr)
    for w in r.warnings:
        print(fill(f"tuneplan plan: warning: {w}", err_width), file=sys.stderr)
    if not r.fits:
        print(fill(f"tuneplan plan: does not fit: {outcome.model.name} needs {_gib(r.choice.memory.device_bytes)} "
                   f"at least, {_gib(r.budget_bytes)} usable on {outcome.hardware.gpu.name}", err_width),
              file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    per = " per GPU" if r.choice.setup.num_gpus > 1 or r.choice.setup.strategy == "fsdp" else ""
    print(fill(f"tuneplan plan: fits: {r.choice.describe()} ({_gib(r.choice.memory.device_bytes)}{per} of "
               f"{_gib(r.usable_bytes)})", err_width), file=sys.stderr)
    return EXIT_OK


# -- human output --------------------------------------------------------------------------
GiB = 1024**3
BAR = 40
_LABELS = {
    "runtime_overhead": "CUDA context + cuBLAS workspace",
    "quantized_weights": "4-bit weights + constants",
    "unquantized_weights": "16-bit frozen weights",
    "adapter_weights": "trainable weights",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "saved_activations": "saved activations",
    "transient_peak": "transient peak (loss, dequant, recompute)",
    "allocator_overhead": "allocator reserve + fragmentation",
}


def _gib(n: float | None) -> str:
    from planner.gpus import format_gib  # deferred, like every import here: --help stays light

    return format_gib(n)


def _bar(n: float, capacity: float, width: int = BAR) -> str:
    """`n` as a share of `capacity` in `width` cells; more than the capacity fills the cells
    and ends with `▶` (the bar never runs past its column)."""
    if width <= 0:
        return ""
    cells = 0 if capacity <= 0 else n / capacity * width
    if cells > width:
        return "█" * (width - 1) + "▶"
    full = int(cells)
    return "█" * full + ("▌" if cells - full >= 0.5 and full < width else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


_ROW_KNOBS = {"method": "method", "sequence length": "seq_len", "micro-batch": "micro_batch",
              "grad accumulation": "grad_accum", "grad checkpointing": "grad_checkpointing", "optimizer": "optimizer",
              "attention": "attn", "loss": "fused_ce", "precision": "compute_dtype", "packing": "packing"}


def _knob_rows(outcome, given_by: str = "you", changed=()) -> list[tuple[str, str, str]]:
    """(label, value, who chose it). `given_by`: who fixed the fixed knobs (`you`, `preset`);
    `changed`: knobs a preset re-fit changed (shown as `re-fit`)."""
    rows = _plain_knob_rows(outcome)
    out = []
    for label, value, who in rows:
        if _ROW_KNOBS.get(label) in changed:
            who = "re-fit"
        elif who == "you":
            who = given_by
        out.append((label, value, who))
    return out


def _plain_knob_rows(outcome) -> list[tuple[str, str, str]]:
    s = outcome.result.choice.setup
    fixed = set(outcome.request.fixed)
    def src(*keys):
        return "you" if any(k in fixed for k in keys) else "solver"
    method_src = "you" if outcome.request.method != AUTO else "solver"
    req = outcome.request
    gpus_src = "you" if (getattr(req, "gpus", None) or "num_gpus" in fixed) else "solver"
    gpu_text = f"{s.num_gpus} x {outcome.hardware.gpu.name}"
    if s.num_gpus > 1 or s.strategy == "fsdp":
        gpu_text += f", {s.strategy.upper()}"
        if outcome.result.nodes > 1:
            gpu_text += f", {outcome.result.nodes} machines"
        if outcome.result.cpu_offload:
            gpu_text += ", CPU offload"
    rows = [("GPUs", gpu_text, gpus_src),
            ("method", {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}[s.method], method_src)]
    if s.method == "qlora":
        rows.append(("4-bit format", f"{s.quant_type}{', double quant' if s.double_quant else ''}",
                     src("quant_type", "double_quant") if fixed & {"quant_type", "double_quant"} else "default"))
    if s.method != "full":
        targets = s.lora_targets if isinstance(s.lora_targets, str) else ",".join(s.lora_targets)
        rows.append(("LoRA", f"r {s.lora_rank}, alpha {s.lora_alpha}, dropout {s.lora_dropout}, {targets}",
                     "you" if fixed & set(("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")) else "default"))
    rows += [
        ("sequence length", str(s.seq_len), "you" if "seq_len" in fixed else
         ("dataset" if (outcome.request.dataset and outcome.request.dataset.p99_tokens)
          or outcome.request.dataset_source else "default")),
        ("micro-batch", str(s.micro_batch), src("micro_batch")),
        ("grad accumulation", f"{s.grad_accum} (effective batch {s.effective_batch()})", src("grad_accum")),
        ("grad checkpointing", "on" if s.grad_checkpointing else "off", src("grad_checkpointing")),
        ("optimizer", s.optimizer, src("optimizer")),
        ("attention", s.attn, "you" if "attn" in fixed else ("default" if s.attn == "sdpa" else "solver")),
        ("loss", "fused linear cross-entropy" if s.fused_ce else "transformers (full fp32 logits)", src("fused_ce")),
        ("packing", "on (examples packed, padding-free)" if s.packing else "off (one example per row, padded)",
         "you" if "packing" in fixed else "default"),
        ("precision", s.compute_dtype, "you" if "compute_dtype" in fixed else "solver"),
    ]
    return rows


def _top_reason(r, reasons) -> str | None:
    """The one sentence that matters most: why it does not fit, or why this method."""
    if not r.fits:
        return r.suggestions[0] if r.suggestions else (reasons[-1] if reasons else None)
    method = ("lora", "qlora", "full fine-tuning", "one ")  # the method (or GPU count) sentence
    skip = ("Sequence length", "Capped at")
    return next((x for x in reasons if x.lower().startswith(method)),
                next((x for x in reasons if not x.startswith(skip)), reasons[0] if reasons else None))


def render(outcome, width: int | None = None, given_by: str = "you", changed=()) -> str:
    """The human-readable plan, wrapped to `width` columns (None: not wrapped). The first lines
    are the essentials (fits or not, the configuration, the memory total against the card, the
    top reason, speed); the configuration table, the breakdown and the alternatives follow."""
    from tuneplan.commands.terminal import wrap
    from tuneplan.ui.formatting import count  # one number format for the CLI and the screens

    r = outcome.result
    c = r.choice
    m = c.memory
    gpu = outcome.hardware.gpu
    spec = outcome.model.spec
    from planner.gpus import PRICES_AS_OF
    from planner.throughput import trainable_parameters

    out: list[str] = []
    params = spec.parameter_count()
    trainable = trainable_parameters(spec, c.setup)
    cap = outcome.hardware.usable_bytes()
    multi = c.setup.num_gpus > 1 or c.setup.strategy == "fsdp"
    free = f", {_gib(outcome.hardware.free_bytes)} free" if outcome.hardware.free_bytes is not None else ""
    out += wrap(f"{outcome.model.name} ({spec.model_type}, {count(params)} parameters) on {gpu.name} "
                f"({_gib(gpu.memory_bytes)}{free})", width)
    out += wrap(("FITS: " if r.fits else "DOES NOT FIT. Smallest configuration tried: ") + c.describe(), width)
    where = " per GPU" if multi else ""
    share = f" ({m.device_bytes / cap:.0%})" if cap else ""
    room = r.headroom_bytes()
    room_text = f"{_gib(room)} headroom" if room >= 0 else f"{_gib(-room)} over the budget"
    out += wrap(f"{_gib(m.device_bytes)}{where} of {_gib(cap)} usable{share}, {room_text}", width, "Memory    ")
    reasons = list(r.reasons)
    if given_by != "you":  # the solver's "as asked" is the preset's (or its re-fit's) choice
        whose = f"the {given_by}'s re-fit" if changed else f"the {given_by}"
        reasons = [x.replace(" as asked.", f" ({whose}: see above).") for x in reasons]
    top = _top_reason(r, reasons)
    if top:
        out += wrap(top, width, "Why       ")
    t = c.throughput
    if t.tokens_per_second:
        over = f" over {c.setup.num_gpus} GPUs" if c.setup.num_gpus > 1 else ""
        comm = t.parts.get("communication")
        comm_text = f", {comm * 1000:.0f} ms communication per micro-batch" if comm else ""
        out += wrap(f"{t.tokens_per_second:,.0f} tokens/s{over} ({t.optimizer_step_seconds:.2f} s per optimizer "
                    f"step, MFU {t.mfu:.0%}, {t.bound}-bound{comm_text})" + ("" if r.fits else "; if it fitted"),
                    width, "Speed     ")
    else:
        out += wrap("unknown (give --gpu NAME for the card's speed)", width, "Speed     ")
    if r.fits:
        assumed = " (assumed; give --dataset or --dataset-tokens)" if r.dataset_tokens_assumed else ""
        out += wrap(f"{_duration(r.seconds)} for {r.dataset_tokens / 1e6:,.1f}M tokens x {r.epochs:g} epoch"
                    f"{'s' if r.epochs != 1 else ''}{assumed}", width, "Time      ")
        if r.cost is not None:
            out += wrap(f"{'<$0.01' if 0 < r.cost < 0.005 else f'${r.cost:,.2f}'} at ${r.price_per_hour:.2f}/GPU-hour "
                        f"(typical price as of {PRICES_AS_OF}; --price to override)", width, "Cost      ")
    out.append("")
    # the configuration table: label, value (wrapped in its column), who chose it
    value_w = 48 if width is None else max(16, width - 2 - 20 - 1 - 1 - len("chosen by"))
    out.append(f"{'Configuration':<{2 + 20 + 1 + value_w + 1}}chosen by")
    for k, v, who in _knob_rows(outcome, given_by, changed):
        lines = wrap(v, value_w) if width is not None else [v]
        out.append(f"  {k:<20} {lines[0]:<{value_w}} {who}")
        out += [f"  {'':<20} {more}" for more in lines[1:]]
    out += wrap(f"{trainable / 1e6:,.1f}M parameters ({trainable / params:.2%})", width, f"  {'trainable':<20} ")
    out.append("")
    # the breakdown: one bar scale for every row, as wide as the terminal allows
    bar_w = BAR if width is None else max(0, min(BAR, width - 66))
    if multi:
        out += wrap(f"Memory per GPU, each of {c.setup.num_gpus} ({c.setup.strategy.upper()}; predicted; "
                    f"bar = share of {_gib(cap)} usable)", width)
    else:
        out += wrap(f"Memory on one GPU (predicted; bar = share of {_gib(cap)} usable)", width)
    for name, label in _LABELS.items():
        v = m.components.get(name, 0)
        if v <= 0:
            continue
        out.append(f"  {label:<42} {v / GiB:7.2f} GiB  {_bar(v, cap, bar_w)}".rstrip())
    out.append(f"  {'torch peak (max_memory_allocated)':<42} {m.torch_peak_bytes / GiB:7.2f} GiB")
    total = f"  {'on the card (nvidia-smi)':<42} {m.device_bytes / GiB:7.2f} GiB"
    if cap and bar_w:
        total += f"  [{_bar(m.device_bytes, cap, bar_w):<{bar_w}}] {m.device_bytes / cap:.0%}"
    elif cap:
        total += f"  {m.device_bytes / cap:.0%}"
    out.append(total)
    out.append(f"  {'headroom':<42} {r.headroom_bytes() / GiB:7.2f} GiB")
    out += wrap(f"(safety margin {_gib(r.usable_bytes - r.budget_bytes)})", width, f"  {'':<42} ")
    out.append("")
    for title, items, mark in (("Why", reasons, "-"), ("What would make it fit", r.suggestions, "-"),
                               ("Warnings", r.warnings, "!"), ("Notes", outcome.notes, "-")):
        if items:
            out.append(title)
            for x in items:
                out += wrap(x, width, f"  {mark} ")
    if r.alternatives:
        out.append("")
        out.append("Alternatives that also fit")
        for a in r.alternatives:
            tps = f"{a.throughput.tokens_per_second:,.0f} tok/s" if a.throughput.tokens_per_second else "speed unknown"
            out += wrap(f"{a.describe()}: {a.memory.device_bytes / GiB:.1f} GiB, {tps}", width, "  - ")
    return "\n".join(out)

