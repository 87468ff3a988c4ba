"""The plan's human output, shared by `tuneplan plan`, `tuneplan plan --preset` and `tuneplan
presets`: the plan table with its memory bars, and the warnings those commands print alike."""

from __future__ import annotations

import sys

AUTO = "auto"


# -- the plan --------------------------------------------------------------------------
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


def _knob_rows(outcome, given_by: str = "you", changed=()) -> list[tuple[str, str, str]]:
    """(label, value, who chose it). `given_by`: who fixed the fixed knobs (`you`, `preset`);
    `changed`: knobs a preset re-fit changed (shown as `re-fit`)."""
    from tuneplan.knobs import KNOBS

    row_knobs = {k.label: k.name for k in KNOBS if k.group is None}  # one row per knob
    rows = _plain_knob_rows(outcome)
    out = []
    for label, value, who in rows:
        if row_knobs.get(label) in changed:
            who = "re-fit"
        elif who == "you":
            who = given_by
        out.append((label, value, who))
    return out


def _plain_knob_rows(outcome) -> list[tuple[str, str, str]]:
    from tuneplan.knobs import BY_NAME, LORA_KNOBS, QLORA_KNOBS, targets_text

    def label(name: str) -> str:
        return BY_NAME[name].label

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
    rows = [(label("num_gpus"), gpu_text, gpus_src),
            (label("method"), {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}[s.method], method_src)]
    if s.method == "qlora":
        rows.append((label("quant_type"), f"{s.quant_type}{', double quant' if s.double_quant else ''}",
                     "you" if fixed & set(QLORA_KNOBS) else "default"))
    from planner.setup import TrainSetup

    default = TrainSetup()
    if s.method != "full":
        dropout_by_solver = "lora_dropout" not in fixed and s.lora_dropout != default.lora_dropout
        lora_src = "you" if fixed & set(LORA_KNOBS) else ("solver" if dropout_by_solver else "default")
        rows.append((label("lora_rank"), f"r {s.lora_rank}, alpha {s.lora_alpha}, dropout {s.lora_dropout}"
                     f"{' (solver)' if dropout_by_solver and lora_src == 'you' else ''}, "
                     f"{targets_text(s.lora_targets)}", lora_src))
    rows += [
        (label("seq_len"), str(s.seq_len), "you" if "seq_len" in fixed else
         ("solver (max)" if getattr(outcome.request, "seq_len_max", False) else
          "dataset" if (outcome.request.dataset and outcome.request.dataset.p99_tokens)
          or outcome.request.dataset_source else "default")),
        (label("micro_batch"), str(s.micro_batch), src("micro_batch")),
        (label("grad_accum"), f"{s.grad_accum} (effective batch {s.effective_batch()})", src("grad_accum")),
        (label("grad_checkpointing"), "on" if s.grad_checkpointing else "off", src("grad_checkpointing")),
        (label("optimizer"), s.optimizer, src("optimizer")),
        (label("attn"), s.attn, "you" if "attn" in fixed else ("default" if s.attn == "sdpa" else "solver")),
        (label("fused_ce"), "fused linear cross-entropy" if s.fused_ce else "transformers (full fp32 logits)",
         src("fused_ce")),
        (label("packing"), "on (examples packed, padding-free)" if s.packing else "off (one example per row, padded)",
         "you" if "packing" in fixed else ("solver" if s.packing != default.packing else "default")),
        (label("compute_dtype"), s.compute_dtype, "you" if "compute_dtype" in fixed else "solver"),
    ]
    # the long-context knobs get a row when they are on or asked for (docs/long-context.md)
    if s.offload_activations or "offload_activations" in fixed:
        host = int(outcome.result.choice.memory.details.get("host_activation_bytes", 0))
        rows.append((label("offload_activations"), f"on ({_gib(host)} pinned host RAM)" if s.offload_activations
                     else "off", src("offload_activations")))
    if s.tiled_mlp or "tiled_mlp" in fixed:
        from planner.memory import tiled_mlp_shards

        shards, per = tiled_mlp_shards(s, outcome.model.spec.hidden_size)
        rows.append((label("tiled_mlp"), f"on ({shards} shards of {per} tokens)" if s.tiled_mlp else "off",
                     src("tiled_mlp")))
    if s.chunked_norm or "chunked_norm" in fixed:
        from planner.memory import norm_chunk_tokens

        per = norm_chunk_tokens(s.micro_batch * s.seq_len, outcome.model.spec.hidden_size)
        rows.append((label("chunked_norm"), f"on (chunks of {per} tokens)" if s.chunked_norm else "off",
                     src("chunked_norm")))
    if s.offload_embedding or "offload_embedding" in fixed:
        mem = outcome.result.choice.memory.details
        if "embed_tokens_host" in mem:
            on = f"on ({_gib(mem['embed_tokens_host'])} table in host RAM)"
        else:
            on = "on (changes nothing here: tied or trained embedding, or several GPUs)"
        rows.append((label("offload_embedding"), on if s.offload_embedding else "off", src("offload_embedding")))
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
    from tuneplan.formatting import count  # one number format for the CLI and the screens

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


def warn_remote_code(preset) -> None:
    """The warning for a preset that asks to run the model's own code (only --trust-remote-code grants it)."""
    if preset.config.model.trust_remote_code:
        from tuneplan.services.models import remote_code_warning

        print(f"tuneplan: warning: {remote_code_warning(preset.config.model.source, f'preset {preset.name}')}",
              file=sys.stderr)
