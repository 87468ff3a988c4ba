"""The training knobs, declared once: field metadata on `planner.setup.TrainSetup`.

Each `Knob` names a `TrainSetup` field and says how the outside world spells and reads it:
its command-line flag (one spelling for `tuneplan plan`, `train` and `probe`; old spellings
stay as hidden aliases), how a flag value is parsed (one-line `UserError` naming the flag),
the rule a value must meet (one-line `ConfigError` naming the field), whether the planner
chooses it when it is left out, whether presets and run configs may set it, whether a preset
re-fit chooses it again, the labels the plan table, the re-fit summary and the wizard show,
and the wizard's row order and options. Everything that lists knobs (the flags, the run-config
and preset `[setup]` schema, the fixable set, the "equivalent command" line, the plan rows, the
wizard's knob rows) is generated from `KNOBS`.

`PartialSetup` is a setup as the user gave it: a knob that is absent or `None` is left to the
planner. The flags, a run-config or preset `[setup]` table and the wizard all produce one.

Core layer: standard library, `planner` and `tuneplan.errors` only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from planner.setup import ALL_LINEAR, ATTENTIONS, DTYPES, METHODS, OPTIMIZERS, TrainSetup
from tuneplan.errors import UserError
from tuneplan.settings import COUNT as NUMBER_COUNT
from tuneplan.settings import MAX_COUNT, NUMBER, Setting  # noqa: F401  (MAX_COUNT re-exported)

AUTO = "auto"
"""A flag value meaning "the planner decides" (the same as leaving the flag out)."""
LONGEST = "max"
"""`--seq-len max`: the planner searches the longest sequence that fits (a knob with `longest`)."""

COUNT, FRACTION, SWITCH, CHOICE, TARGETS = "count", "fraction", "switch", "choice", "targets"
LORA, QLORA, PARALLEL = "lora", "qlora", "parallel"
TARGET_GROUPS = (ALL_LINEAR, "attention")
"""The `lora_targets` values that name a group of modules, resolved for each model."""


@dataclass(frozen=True)
class Knob:
    """One `TrainSetup` field as the CLI, the config files and the screens see it."""

    name: str
    """The `TrainSetup` field."""
    flag: str
    """The command-line flag (`--lora-r`)."""
    kind: str
    """How a flag value is read and a config value checked: `count` (whole number > 0),
    `fraction` (number in [0, 1)), `switch` (on/off), `choice` (one of `choices`), `targets`
    (LoRA target modules)."""
    label: str
    """Row label in the plan's configuration table."""
    help: str
    choices: tuple[str, ...] = ()
    """`choice` knobs: the values a flag takes."""
    file_choices: tuple[str, ...] = ()
    """Values a config holds besides `choices` but no flag takes (`single`: the one-GPU strategy
    the planner writes)."""
    value_aliases: Mapping[str, str] = field(default_factory=dict)
    """Other flag spellings of a value (`bf16` -> `bfloat16`)."""
    old_flags: tuple[str, ...] = ()
    """Former spellings of the flag, accepted but not shown in --help."""
    planned: bool = False
    """The planner chooses it when the user leaves it out (`tuneplan train` plans these)."""
    in_files: bool = True
    """Presets and run configs may set it (tuneplan's training path implements it)."""
    refitted: bool = False
    """A preset re-fit chooses it again for the new hardware (else the preset's value is kept)."""
    group: str | None = None
    """`lora`: only LoRA/QLoRA use it; `qlora`: only QLoRA; `parallel`: where it runs (GPU
    count, strategy), not what is trained."""
    short: str | None = None
    """Label in a re-fit's list of changes (`micro-batch 2 -> 1`); None: not listed."""
    screen: str | None = None
    """Label of its row on the wizard's plan screen; None: not on it."""
    screen_row: int = 0
    """Place of that row, top to bottom (the registry's order is the flags' and the re-fit's)."""
    screen_help: str | None = None
    """The plan screen's one-line help while the row has focus."""
    screen_choices: tuple[tuple[str, Any], ...] = ()
    """The row's options as (shown, value) when `screen_options` cannot derive them from the
    kind and `choices` (the method: its own order and labels)."""
    longest: bool = False
    """A count that also takes `max`: the planner searches the largest value that fits
    (`--seq-len max`); in a `PartialSetup` it stays `LONGEST` and counts as not fixed."""

    @property
    def dest(self) -> str:
        """The argparse attribute of the flag."""
        return self.flag[2:].replace("-", "_")

    def metavar(self) -> str:
        if self.kind == COUNT:
            return "auto|N|max" if self.longest else ("N" if self.name != "num_gpus" else "auto|N")
        if self.kind == FRACTION:
            return "X"
        if self.kind == SWITCH:
            return "auto|on|off"
        if self.kind == TARGETS:
            return "T"
        return "|".join((AUTO, *self.choices))

    def screen_options(self) -> tuple[tuple[str, Any], ...]:
        """The plan screen row's options, (shown, value), cycled with Left/Right; () for a
        `count`, which is typed. A switch is on/off, the LoRA targets are the groups the planner
        resolves per model, a choice its values as the flag spells them."""
        if self.screen_choices:
            return self.screen_choices
        if self.kind == SWITCH:
            return (("on", True), ("off", False))
        if self.kind == TARGETS:
            return tuple((g, g) for g in TARGET_GROUPS)
        if self.kind == CHOICE:
            return tuple((c, c) for c in self.choices)
        return ()

    def parse(self, text: Any) -> Any:
        """A flag's text -> the `TrainSetup` value, or None for `auto`. Raises a one-line
        `UserError` naming the flag."""
        if text is None:
            return None
        raw = str(text).strip()
        if raw.lower() == AUTO:
            return None
        if self.longest and raw.lower() == LONGEST:
            return LONGEST
        if self.kind == COUNT:
            return parse_count(text, self.flag)
        if self.kind == FRACTION:
            try:
                x = float(raw)
            except ValueError:
                raise UserError(f"{self.flag} must be a number (got {text!r})") from None
            if not 0 <= x < 1:  # NaN fails both comparisons
                raise UserError(f"{self.flag} must be in [0, 1) (got {text})")
            return x
        if self.kind == SWITCH:
            v = raw.lower()
            if v in ("on", "true", "yes", "1"):
                return True
            if v in ("off", "false", "no", "0"):
                return False
            raise UserError(f"{self.flag} must be auto, on or off (got {text!r})")
        if self.kind == TARGETS:
            return parse_targets(raw, self.flag)
        v = raw.lower()
        v = self.value_aliases.get(v, v)
        if v not in self.choices:
            raise UserError(f"{self.flag} must be one of {AUTO}, {', '.join(self.choices)} (got {text!r})")
        return v

    def show(self, value: Any) -> str:
        """A `TrainSetup` value as its flag takes it (the "equivalent command")."""
        if self.kind == SWITCH:
            return "on" if value else "off"
        if self.kind == FRACTION:
            return f"{value:g}"
        if self.kind == TARGETS:
            return targets_text(value)
        return str(value)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not a valid config value of this knob (None: it is)."""
        if self.kind == COUNT:  # the run settings' rules (`tuneplan.settings`), so both say the same
            return _WHOLE.problem(value)
        if self.kind == FRACTION:
            return _FRACTION.problem(value)
        if self.kind == SWITCH:
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == TARGETS:
            ok = isinstance(value, str) or (isinstance(value, tuple) and len(value) > 0)
            return None if ok else "must be all-linear or a non-empty list of module names"
        allowed = self.file_choices + self.choices
        if value in allowed:
            return None
        if len(allowed) == 2:
            return f"must be {allowed[0]} or {allowed[1]}"
        return f"must be one of {', '.join(allowed)}"


_WHOLE = Setting(NUMBER_COUNT)
_FRACTION = Setting(NUMBER, lo=0, hi=1, hi_open=True)

# The registry. Its order is the order of a re-fit's list of changes and of the flags in
# --help. Every `TrainSetup` field is a knob; how other training stacks differ (the planner's
# calibration) is `planner.setup.CalibrationProfile`, which has no flags and no config keys.
KNOBS: tuple[Knob, ...] = (
    Knob("method", "--method", CHOICE, "method", "training method (default: auto, LoRA or QLoRA)",
         choices=METHODS, planned=True, short="method", screen="method", screen_row=1,
         screen_choices=(("LoRA", "lora"), ("QLoRA 4-bit", "qlora"), ("full", "full")),
         screen_help="method: LoRA (16-bit base), QLoRA (4-bit base) or full; Left/Right"),
    Knob("seq_len", "--seq-len", COUNT, "sequence length", "tokens per sequence (default: dataset p99 or 2048; "
         "max: the longest that fits, docs/long-context.md)",
         planned=True, short="sequence length", screen="sequence length", screen_row=2, longest=True,
         screen_help="sequence length: tokens per packed row; type a number, or max for the longest that fits"),
    Knob("micro_batch", "--batch", COUNT, "micro-batch", "micro-batch: sequences per forward/backward on one GPU",
         planned=True, refitted=True, short="micro-batch", screen="micro-batch", screen_row=3,
         screen_help="micro-batch: sequences per forward/backward; type a number"),
    Knob("grad_accum", "--grad-accum", COUNT, "grad accumulation", "micro-batches per optimizer step",
         planned=True, refitted=True, short="accumulation", screen="grad accum", screen_row=4,
         screen_help="grad accum: micro-batches per optimizer step; type a number"),
    Knob("grad_checkpointing", "--grad-checkpointing", SWITCH, "grad checkpointing",
         "activation checkpointing (default: auto)", planned=True, refitted=True, short="checkpointing",
         screen="checkpointing", screen_row=7,
         screen_help="checkpointing: recompute activations to save memory; Left/Right"),
    Knob("optimizer", "--optimizer", CHOICE, "optimizer", "AdamW with 32-bit or 8-bit states, paged or not",
         choices=OPTIMIZERS, planned=True, refitted=True, short="optimizer", screen="optimizer", screen_row=8,
         screen_help="optimizer: AdamW 32-bit or 8-bit states, paged or not; Left/Right"),
    Knob("compute_dtype", "--compute-dtype", CHOICE, "precision", "compute dtype (default: bf16 where supported)",
         choices=DTYPES, value_aliases={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"},
         old_flags=("--dtype",), planned=True, refitted=True, short="precision"),
    Knob("attn", "--attn", CHOICE, "attention", "attention implementation (default: sdpa)", choices=ATTENTIONS,
         planned=True, refitted=True, short="attention"),
    Knob("fused_ce", "--fused-ce", SWITCH, "loss", "fused linear cross-entropy (default: on)", planned=True,
         refitted=True, short="fused loss"),
    Knob("packing", "--packing", SWITCH, "packing", "pack examples into full rows, padding-free (default: on)",
         planned=True),
    Knob("offload_activations", "--offload-activations", SWITCH, "activation offload",
         "keep checkpointed layer inputs in host RAM (long context; implies checkpointing; default: auto, "
         "only when the sequence needs it)", planned=True, refitted=True, short="activation offload"),
    Knob("tiled_mlp", "--tiled-mlp", SWITCH, "tiled MLP",
         "compute the MLP shard by shard along the sequence, recomputed in backward (long context; "
         "default: auto, only when the sequence needs it)", planned=True, refitted=True, short="tiled MLP"),
    Knob("chunked_norm", "--chunked-norm", SWITCH, "chunked norm",
         "RMSNorm that keeps its input and one fp32 value per token, computed chunk by chunk (long context; "
         "default: auto, only when the sequence needs it)", planned=True, refitted=True, short="chunked norm"),
    Knob("offload_embedding", "--offload-embedding", SWITCH, "embedding offload",
         "keep the frozen input embedding table in host RAM, look tokens up there (long context; LoRA/QLoRA "
         "with an untied embedding; default: auto, only when the sequence needs it)", planned=True, refitted=True,
         short="embedding offload"),
    Knob("quant_type", "--quant-type", CHOICE, "4-bit format", "QLoRA 4-bit format (default nf4)",
         choices=("nf4", "fp4"), group=QLORA),
    Knob("double_quant", "--double-quant", SWITCH, "4-bit format", "QLoRA double quantization (default on)",
         group=QLORA),
    Knob("lora_rank", "--lora-r", COUNT, "LoRA", "LoRA rank (default 16)", group=LORA, screen="LoRA rank", screen_row=5,
         screen_help="LoRA rank: adapter size (alpha follows the setup); type a number"),
    Knob("lora_alpha", "--lora-alpha", COUNT, "LoRA", "LoRA alpha (default 32)", group=LORA),
    Knob("lora_dropout", "--lora-dropout", FRACTION, "LoRA", "LoRA dropout (default 0.05)", group=LORA),
    Knob("lora_targets", "--lora-targets", TARGETS, "LoRA",
         "attention | all-linear | q_proj,v_proj,... (default all-linear)", group=LORA, screen="LoRA targets",
         screen_row=6,
         screen_help="LoRA targets: all linear layers or attention only; Left/Right"),
    Knob("num_gpus", "--gpus", COUNT, "GPUs", "GPUs to train on (default auto; docs/multi-gpu.md)",
         group=PARALLEL),
    Knob("strategy", "--strategy", CHOICE, "GPUs", "multi-GPU strategy (default auto: DDP when a replica fits "
         "one GPU, else FSDP)", choices=("ddp", "fsdp"), file_choices=("single",), group=PARALLEL),
    Knob("cpu_offload", "--cpu-offload", SWITCH, "GPUs", "FSDP CPU offload of weights, gradients, optimizer",
         group=PARALLEL),
)
BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}

RUN_KNOBS = tuple(k.name for k in KNOBS if k.in_files)
"""The `[setup]` keys of run configs and presets: the knobs tuneplan's training path implements."""
PLANNED = tuple(k.name for k in KNOBS if k.planned)
"""The knobs the planner chooses when the user leaves them out (or says `auto`)."""
FIXABLE = tuple(k.name for k in KNOBS if k.name != "method")
"""Knobs a plan request may fix (the method is the request's own field)."""
REFITTED = tuple(k.name for k in KNOBS if k.refitted)
"""Knobs a preset re-fit chooses again for the new hardware; the others are kept."""
SHOWN = {k.name: k.short for k in KNOBS if k.short}
"""Knobs a re-fit lists when it changes them -> their label there."""
SCREEN_KNOBS = tuple(sorted((k for k in KNOBS if k.screen), key=lambda k: k.screen_row))
"""The wizard plan screen's knob rows, top to bottom."""
LORA_KNOBS = tuple(k.name for k in KNOBS if k.group == LORA)
QLORA_KNOBS = tuple(k.name for k in KNOBS if k.group == QLORA)
FLAGS = {k.name: k.flag for k in KNOBS}


# -- the effective batch: the one rule that ties micro-batch and accumulation --------------------
def effective_batch(micro_batch: int | None = None, grad_accum: int | None = None, given: int | None = None) -> int:
    """Sequences per optimizer step (per GPU) a plan keeps constant while it trades micro-batch for
    accumulation: `given` (`--effective-batch`, a preset's constraint); else micro-batch x
    accumulation when both are fixed; else the planner's default (16), rounded down to a multiple
    of a fixed accumulation (at least one micro-batch per step)."""
    from planner.solver import DEFAULT_EFFECTIVE_BATCH

    if given is not None:
        return given
    if micro_batch and grad_accum:
        return micro_batch * grad_accum
    if grad_accum and DEFAULT_EFFECTIVE_BATCH % grad_accum:
        return grad_accum * max(1, DEFAULT_EFFECTIVE_BATCH // grad_accum)
    return DEFAULT_EFFECTIVE_BATCH


def accumulation(effective: int, micro_batch: int) -> int:
    """The gradient accumulation that keeps `effective` sequences per step at `micro_batch`
    (the nearest whole number, at least 1): a micro-batch edit moves the accumulation."""
    return max(1, round(effective / micro_batch))


def parse_count(text: Any, flag: str) -> int:
    """A flag's whole number > 0 (`1_000` allowed); one-line UserError naming `flag`."""
    try:
        n = int(str(text).strip().replace("_", ""))
    except ValueError:
        raise UserError(f"{flag} must be a whole number (got {text!r})") from None
    if n <= 0:
        raise UserError(f"{flag} must be > 0 (got {n})")
    return n


def parse_targets(text: str, flag: str = "--lora-targets") -> str | tuple[str, ...]:
    """`all-linear`, `attention` or `q_proj,v_proj` -> the TrainSetup value. `attention` stays a
    group the planner (`planner.spec.resolve_lora_targets`) and the trainer resolve for each
    model: phi-3's attention is one fused `qkv_proj` and an `o_proj`."""
    t = text.strip()
    group = t.lower().replace("_", "-")
    if group in TARGET_GROUPS:
        return group
    names = tuple(x.strip() for x in t.split(",") if x.strip())
    if not names:
        raise UserError(f"{flag} must be all-linear, attention or module names like q_proj,v_proj (got {text!r})")
    return names


def targets_text(targets: str | Iterable[str]) -> str:
    """A `lora_targets` value as `--lora-targets` takes it."""
    return targets if isinstance(targets, str) else ",".join(targets)


# -- the command line --------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser | Any, *, title: str | None = None,
              skip: Iterable[str] = (), help_overrides: Mapping[str, str] | None = None) -> None:
    """Every knob's flag (a string, default None = left to the planner; `parse_args` reads it).
    Old spellings are hidden aliases writing the same attribute."""
    target = parser.add_argument_group(title) if title else parser
    skip = set(skip)
    for k in KNOBS:
        if k.name in skip:
            continue
        help_text = (help_overrides or {}).get(k.name, k.help)
        target.add_argument(k.flag, dest=k.dest, metavar=k.metavar(), help=help_text)
        for old in k.old_flags:
            target.add_argument(old, dest=k.dest, help=argparse.SUPPRESS)


def given_flags(args: argparse.Namespace, names: Iterable[str] | None = None) -> list[Knob]:
    """The knobs whose flag was given (as anything but `auto`)."""
    wanted = None if names is None else set(names)
    return [k for k in KNOBS if (wanted is None or k.name in wanted)
            and getattr(args, k.dest, None) is not None and str(getattr(args, k.dest)).strip().lower() != AUTO]


@dataclass(frozen=True)
class PartialSetup:
    """A setup as the user gave it: knob -> value; a knob absent or None is the planner's to
    choose. Produced by the flags (`from_args`), a `[setup]` table (`from_table`) and the wizard
    (its edited knobs)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PartialSetup":
        """The knob flags given (`auto` given: None, which overrides a file's value)."""
        out: dict[str, Any] = {}
        for k in KNOBS:
            text = getattr(args, k.dest, None)
            if text is not None:
                out[k.name] = k.parse(text)
        return cls(out)

    @classmethod
    def from_setup(cls, setup: TrainSetup, names: Iterable[str]) -> "PartialSetup":
        """The knobs `names` of a complete setup (the keys a `[setup]` table held)."""
        return cls({n: getattr(setup, n) for n in names if n in BY_NAME})

    def over(self, base: "PartialSetup") -> "PartialSetup":
        """These values laid over `base` (an explicit None here makes the knob the planner's)."""
        return PartialSetup({**base.values, **self.values})

    def fixed(self) -> dict[str, Any]:
        """Knob -> value for the knobs given a value (`max` is the planner's search, not a value)."""
        return {k: v for k, v in self.values.items() if v is not None and v != LONGEST}

    def is_fixed(self, name: str) -> bool:
        v = self.values.get(name)
        return v is not None and v != LONGEST

    def longest(self) -> bool:
        """Whether the sequence length was given as `max` (the planner searches the longest)."""
        return self.values.get("seq_len") == LONGEST

    def auto(self) -> list[str]:
        """The knobs the planner chooses: in `PLANNED` and not given a value."""
        return [n for n in PLANNED if not self.is_fixed(n)]

    def apply(self, setup: TrainSetup) -> TrainSetup:
        return replace(setup, **self.fixed())


def says_something(knob: Knob, setup: TrainSetup) -> bool:
    """Whether `knob`'s value in `setup` means anything: LoRA knobs only for LoRA/QLoRA, 4-bit
    knobs only for QLoRA, the GPU knobs only when the setup is not one GPU's."""
    if knob.group == LORA and setup.method == "full" or knob.group == QLORA and setup.method != "qlora":
        return False
    value = getattr(setup, knob.name)
    if knob.group == PARALLEL:
        return not (value == getattr(TrainSetup(), knob.name) or (knob.name == "strategy" and value == "single"))
    return True


def equivalent_flags(setup: TrainSetup) -> list[str]:
    """The knob flags that give exactly `setup`: every knob the planner would choose is given,
    and every other knob that says something (`says_something`)."""
    parts: list[str] = []
    for k in KNOBS:
        if says_something(k, setup):
            parts += [k.flag, k.show(getattr(setup, k.name))]
    return parts


REFIT_SEARCHED = ("method", "seq_len")
"""Kept by a preset re-fit, but stepped down when nothing fits (a shorter sequence, then QLoRA
instead of LoRA, as the preset's constraints allow): the re-fit passes them itself."""


def kept_on_refit(setup: TrainSetup, keep: Iterable[str] = ()) -> dict[str, Any]:
    """The knobs a preset re-fit keeps fixed, knob -> the preset's value: everything but the
    re-fitted knobs (`REFITTED`, unless listed in `keep`) and `REFIT_SEARCHED`, where the value
    says something (`says_something`). A new knob is kept unless it is declared `refitted`."""
    keep = set(keep)
    return {k.name: getattr(setup, k.name) for k in KNOBS
            if (k.name in keep or not (k.refitted or k.name in REFIT_SEARCHED)) and says_something(k, setup)}


def validate_setup(s: TrainSetup, prefix: str = "setup", error: Callable[[str], Exception] | None = None) -> None:
    """Raise (`error`, default `UserError`) naming the first knob of `s` whose value breaks its rule:
    `setup.lora_rank must be > 0 (got 0)`."""
    for k in KNOBS:
        value = getattr(s, k.name)
        why = k.problem(value)
        if why:
            text = repr(value)
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise (error or UserError)(f"{prefix}.{k.name} {why} (got {shown})")


__all__ = ["AUTO", "LONGEST", "KNOBS", "BY_NAME", "Knob", "PartialSetup", "RUN_KNOBS", "PLANNED", "FIXABLE", "REFITTED",
           "SHOWN", "SCREEN_KNOBS", "LORA_KNOBS", "QLORA_KNOBS", "FLAGS", "parse_targets", "targets_text", "add_flags",
           "effective_batch", "accumulation", "says_something", "kept_on_refit", "REFIT_SEARCHED",
           "given_flags", "equivalent_flags", "validate_setup", "ALL_LINEAR"]
