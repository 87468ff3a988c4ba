"""`tuneplan plan`: a dry run. Picks the fastest configuration that fits and explains it.

A knob given on the command line is fixed; a knob left out is chosen by the solver. Exit
codes: 0 it fits, 1 it does not fit (with what would make it fit), 2 bad input (one line on
stderr). No torch, no textual: the planner is pure Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

AUTO = "auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Values are validated in run() (one-line errors, exit 2), not by argparse's choices.
    def one_line_error(message: str) -> NoReturn:
        print(f"tuneplan: error: plan: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = one_line_error  # type: ignore[method-assign]
    a = parser.add_argument
    a("--model", "-m", metavar="M", help="catalog name (llama-3.1-8b), Hub id (owner/name) or local folder")
    a("--gpu", metavar="NAME", help="plan for this card from the catalog (4090, a100-80gb, h100, ...)")
    a("--vram", metavar="SIZE", help="plan for this much GPU memory (24GiB, 80GB, 24576MiB); with --gpu: free memory")
    a("--gpu-index", metavar="N", help="with neither --gpu nor --vram: which NVML GPU (default: the one with most free memory)")
    from tuneplan.knobs import add_flags

    add_flags(parser, help_overrides={"num_gpus": "GPUs to train on (default auto: one --gpu/--vram card, more "
                                      "cards suggested when it does not fit; with NVML, all GPUs of one model in "
                                      "the box)", "cpu_offload": "FSDP CPU offload of weights, gradients, optimizer "
                                      "(default off)"})
    a("--gpus-per-node", metavar="N", help="GPUs per machine (default 8); more --gpus span several machines")
    a("--effective-batch", metavar="N", help="sequences per optimizer step, kept constant (default 16)")
    a("--dataset", metavar="PATH|ID", help="a .jsonl/.json/.csv/.parquet file or Hub dataset id: measures example "
      "lengths (sequence length = p99) and tokens per epoch (time, cost)")
    a("--dataset-tokens", metavar="N", help="tokens in one epoch of your dataset, for time and cost (default 10M)")
    a("--p99-len", metavar="N", help="99th-percentile example length in tokens (sets the default sequence length)")
    a("--epochs", metavar="X", help="epochs (default 1)")
    a("--min-seq-len", metavar="N", help="shortest sequence length to consider when suggesting shorter ones")
    a("--max-seq-len", metavar="N", help="cap on the sequence length taken from the dataset")
    a("--prefer-accuracy", action="store_true", help="full fine-tuning first if it fits; no truncation")
    a("--host-ram", metavar="SIZE", help="host RAM for offloaded activations (default: this machine's available "
      "RAM when planning for its GPUs, else unchecked and stated)")
    from planner.margins import DEFAULT_SAFETY_MARGIN  # stdlib only: --help stays fast

    a("--safety-margin", metavar="X", help=f"fraction of usable memory kept free (default {DEFAULT_SAFETY_MARGIN:g}: "
      "the memory model's measured error, planner/margins.py)")
    a("--price", metavar="USD", help="price per GPU-hour for the cost (default: catalog price)")
    a("--json", action="store_true", help="print one JSON object instead of the table")
    a("--preset", metavar="NAME", help="re-fit a preset to --gpu/--vram or this machine (see `tuneplan presets`)")


# -- argument conversion (one-line UserErrors): the readers `train` and `probe` share ----------
from tuneplan.commands.arguments import count as _int  # noqa: E402
from tuneplan.commands.arguments import gpu_index as _gpu_index  # noqa: E402
from tuneplan.commands.arguments import number as _float  # noqa: E402


def build_request(args: argparse.Namespace):
    """argparse namespace -> `tuneplan.app.RunRequest` (raises UserError on bad values)."""
    from planner.solver import DatasetStats
    from tuneplan.app import RunRequest, parse_size
    from tuneplan.commands.arguments import safety_margin, target
    from tuneplan.errors import UserError
    from tuneplan.knobs import PartialSetup

    if not args.model:
        raise UserError("no model given: --model NAME (a catalog name such as llama-3.1-8b, a Hub id or a folder)")
    setup = PartialSetup.from_args(args)  # every knob flag read once (`tuneplan.knobs`)
    tokens = _int(args.dataset_tokens, "--dataset-tokens")
    p99 = _int(args.p99_len, "--p99-len")
    dataset = DatasetStats(total_tokens=tokens, p99_tokens=p99) if (tokens or p99) else None
    if args.dataset is not None and dataset is not None:
        raise UserError("--dataset measures lengths and tokens itself: drop --dataset-tokens/--p99-len, or --dataset")
    margin = safety_margin(args.safety_margin)
    where = target(args)
    return RunRequest(
        model=args.model, dataset=dataset if dataset is not None else args.dataset, setup=setup, target=where,
        effective_batch=_int(args.effective_batch, "--effective-batch"),
        settings={"training.epochs": _float(args.epochs, "--epochs") or 1.0}, prefer_accuracy=args.prefer_accuracy,
        safety_margin=margin, price_per_hour=_float(args.price, "--price", allow_zero=True),
        min_seq_len=_int(args.min_seq_len, "--min-seq-len"), max_seq_len=_int(args.max_seq_len, "--max-seq-len"),
        gpus_per_node=_int(args.gpus_per_node, "--gpus-per-node") or 8,
        host_ram_bytes=parse_size(args.host_ram, "--host-ram") if getattr(args, "host_ram", None) is not None
        else None,
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "preset", None):  # a preset is re-fitted first
        return plan_with_preset(args)
    from tuneplan.app import plan, size_note
    from tuneplan.commands._output import _gib, render
    from tuneplan.errors import EXIT_DOES_NOT_FIT, EXIT_OK
    from tuneplan.commands.terminal import fill, output_width

    from tuneplan.services.command_line import plan_train_parts

    request = build_request(args)
    outcome = plan(request)
    r = outcome.result
    command = plan_train_parts(outcome, _target_flags(args, outcome))
    if args.json:
        import shlex

        out = outcome.to_dict()
        out["command"] = shlex.join(command) if command else None
        print(json.dumps(out, indent=2))
    else:
        print(render(outcome, output_width()))
    err_width = output_width(sys.stderr)
    note = size_note(args.vram) if args.vram else None
    if note:
        print(fill(f"tuneplan plan: note: {note}", err_width), file=sys.stderr)
    for w in r.warnings:
        print(fill(f"tuneplan plan: warning: {w}", err_width), file=sys.stderr)
    if not r.fits:
        if r.host_ram_short_bytes is not None:
            print(fill(f"tuneplan plan: does not fit: what it keeps in host RAM (offloaded activations, the "
                       f"embedding table) needs {_gib(r.host_ram_short_bytes)} of host RAM, "
                       f"{_gib(r.host_ram_bytes)} available", err_width), file=sys.stderr)
            return EXIT_DOES_NOT_FIT
        print(fill(f"tuneplan plan: does not fit: {outcome.model.name} needs {_gib(r.choice.memory.device_bytes)} "
                   f"at least, {_gib(r.budget_bytes)} usable on {outcome.hardware.gpu.name}", err_width),
              file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    per = " per GPU" if r.choice.setup.num_gpus > 1 or r.choice.setup.strategy == "fsdp" else ""
    print(fill(f"tuneplan plan: fits: {r.choice.describe()} ({_gib(r.choice.memory.device_bytes)}{per} of "
               f"{_gib(r.usable_bytes)})", err_width), file=sys.stderr, flush=True)
    if not args.json and command:
        print_command(command, outcome.request)
    return EXIT_OK


def _target_flags(args: argparse.Namespace, outcome: Any) -> list[str]:
    """The flags that name the plan's card to `train` (it checks the run is there): the
    catalog key of --gpu and the --vram given; none for the GPUs NVML finds here."""
    flags = ["--gpu", outcome.hardware.gpu.key] if args.gpu else []
    return flags + (["--vram", args.vram] if args.vram else [])


def print_command(parts: list[str], request: Any) -> None:
    """The last lines of a plan: the `tuneplan train` command that trains it (`request`: the
    planning service's request the plan was made for)."""
    from tuneplan.commands.terminal import fill, output_width
    from tuneplan.services.command_line import DATASET_PLACEHOLDER, wrap_command

    width = output_width()
    print("\nTrain this plan with:")
    print(wrap_command(parts, width))
    if not request.dataset_source:
        print(fill(f"({DATASET_PLACEHOLDER}: your dataset, a .jsonl/.json/.csv/.parquet file or Hub dataset id; "
                   "plan with --dataset for its sequence length and time)", width, "  ", "   "))


# -- `tuneplan plan --preset NAME` -------------------------------------------------------------
def _knob_flags() -> tuple[str, ...]:
    from tuneplan.knobs import KNOBS, PARALLEL

    # the preset sets every knob but where it runs (`--gpus`, `--strategy`: the re-fit's target),
    # and the plan flags that shape the search
    return (*(k.dest for k in KNOBS if k.group != PARALLEL), "effective_batch", "min_seq_len", "max_seq_len",
            "model", "prefer_accuracy")


KNOB_FLAGS = _knob_flags()
"""argparse attributes of the `tuneplan plan` flags a preset (or a run config) already sets."""


def plan_with_preset(args: argparse.Namespace) -> int:
    """`tuneplan plan --preset NAME [--gpu CARD | --vram SIZE] [--json]`: the re-fit, then the plan."""
    from tuneplan.commands._output import render, warn_remote_code
    from tuneplan.app import parse_size
    from tuneplan.errors import EXIT_DOES_NOT_FIT, EXIT_OK, UserError
    from tuneplan.services import presets as P

    given = [k for k in KNOB_FLAGS if getattr(args, k, None) not in (None, False, "auto")]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} cannot be combined with --preset: the preset sets them (copy and edit it, "
                        "or plan without --preset)")
    preset = P.find_preset(args.preset)
    warn_remote_code(preset)
    gpu_index = _gpu_index(getattr(args, "gpu_index", None))
    margin = _float(getattr(args, "safety_margin", None), "--safety-margin", allow_zero=True)
    fit = P.refit(preset, gpu=args.gpu, vram_bytes=parse_size(args.vram) if args.vram else None,
                  gpu_index=gpu_index, safety_margin=margin)
    import shlex

    command = shlex.join(["tuneplan", "train", "--preset", preset.name, *_target_flags(args, fit.outcome)])
    if args.json:
        out = fit.outcome.to_dict()
        out["command"] = command if fit.fits else None
        out["preset"] = {
            "name": preset.name, "origin": preset.origin, "path": str(preset.path) if preset.path else None,
            "fits": fit.fits, "changes": {k: [a if not isinstance(a, tuple) else list(a),
                                              b if not isinstance(b, tuple) else list(b)] for k, a, b in fit.changes},
            "reasons": list(fit.reasons), "notes": list(fit.notes),
        }
        print(json.dumps(out, indent=2))
    else:
        from tuneplan.commands.terminal import fill, output_width

        width = output_width()
        print("\n".join(fill(line, width, "", "    ") for line in fit.summary_lines(skip_notes=fit.outcome.notes)))
        print()
        print(render(fit.outcome, width, given_by="preset", changed={k for k, _, _ in fit.changes}))
    from tuneplan.commands.terminal import fill, output_width

    err_width = output_width(sys.stderr)
    if not fit.fits:
        print(fill(f"tuneplan plan: preset {preset.name} does not fit here", err_width), file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    print(fill(f"tuneplan plan: preset {preset.name}: {fit.change_text()}; train it with: {command}", err_width),
          file=sys.stderr)
    return EXIT_OK
