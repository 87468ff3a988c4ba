"""`tuneplan train`: plan (unless every knob is fixed) and launch a detached training run.

    tuneplan train --config run.toml
    tuneplan train --preset tiny-cpu
    tuneplan train --model llama-3.1-8b --dataset data.jsonl [--method qlora --batch 2 ...]

Flags override the config/preset values. The run goes into a fresh folder under the runs root
(`--runs-dir`, `$TUNEPLAN_RUNS_DIR` or the per-user data folder); the command prints its name
and returns, the training keeps going in its own session. `--foreground` stays attached and
prints progress until the run ends (Ctrl-C checkpoints and stops it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneplan.events import Event
    from tuneplan.knobs import PartialSetup


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """The planner's knobs, spelled as in `tuneplan plan` (`tuneplan.knobs`; a knob given is fixed)."""
    from tuneplan.knobs import add_flags

    add_flags(parser, title="knobs (left out or `auto`: chosen by the planner)",
              help_overrides={"num_gpus": "GPUs to train on through accelerate (default: all GPUs of one model "
                                          "NVML finds here; with --gpu/--vram: 1). See docs/multi-gpu.md"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to train")
    src.add_argument("--config", metavar="RUN.toml", help="a run configuration file")
    src.add_argument("--preset", metavar="NAME", help="a preset (name or .toml path)")
    src.add_argument("--model", help="catalog name, Hub id or local model folder")
    src.add_argument("--dataset", help="local JSONL/JSON/CSV/Parquet file or Hub dataset id")
    src.add_argument("--trust-remote-code", action="store_true", default=None,
                     help="run Python code shipped with the model (off unless given)")
    add_knob_arguments(parser)
    from tuneplan.config import SETTINGS
    from tuneplan.settings import add_flags

    # the hyperparameters and alerts: one flag per setting that has one (`tuneplan/config.py` declares them)
    add_flags(parser, SETTINGS, {"training": "training", "alerts": "alerts (docs/tracking-and-alerts.md)"})
    target = parser.add_argument_group("target (for planning)")
    target.add_argument("--gpu", help="plan for this GPU (default: the GPUs NVML finds)")
    target.add_argument("--vram", help="plan for this much GPU memory, e.g. 24GiB")
    target.add_argument("--gpu-index", metavar="N", help="with neither --gpu nor --vram: which NVML GPU to plan "
                        "for and train on (default: the one with most free memory)")
    target.add_argument("--effective-batch", metavar="N",
                        help="sequences per optimizer step, kept constant (default 16, or --batch x --grad-accum)")
    from planner.margins import DEFAULT_SAFETY_MARGIN  # stdlib only: --help stays fast

    target.add_argument("--safety-margin", metavar="X", help="fraction of usable memory kept free (default "
                        f"{DEFAULT_SAFETY_MARGIN:g}: the memory model's measured error, planner/margins.py)")
    out = parser.add_argument_group("run")
    out.add_argument("--name", help="run folder name (default: <model>-<method>-<time>)")
    out.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    out.add_argument("--foreground", action="store_true", help="stay attached and print progress")
    out.add_argument("--force", action="store_true",
                     help="train here even though --gpu/--vram names hardware NVML does not find")


def given_setup(args: argparse.Namespace, file: "PartialSetup | None" = None) -> "PartialSetup":
    """The knobs fixed by the --config / --preset file (`file`) and by the flags over it (a flag
    given as `auto` hands its knob back to the planner)."""
    from tuneplan.knobs import PartialSetup

    return PartialSetup.from_args(args).over(file or PartialSetup())


def settings(args: argparse.Namespace) -> dict:
    """The hyperparameter and run-setting flags given, `section.field` -> value (`tuneplan.settings`)."""
    from tuneplan.config import SETTINGS
    from tuneplan.settings import given

    return given(args, SETTINGS)


def run_request(args: argparse.Namespace):
    """The flags -> `tuneplan.app.RunRequest` (one-line UserErrors for bad values)."""
    from tuneplan.app import RunRequest
    from tuneplan.commands.arguments import count, safety_margin, target
    from tuneplan.knobs import PartialSetup

    return RunRequest(model=args.model, dataset=args.dataset, setup=PartialSetup.from_args(args),
                      settings=settings(args), target=target(args),
                      effective_batch=count(getattr(args, "effective_batch", None), "--effective-batch"),
                      safety_margin=safety_margin(getattr(args, "safety_margin", None)),
                      config_file=args.config, preset=args.preset, trust_remote_code=args.trust_remote_code,
                      name=args.name, force=getattr(args, "force", False))


def build_config(args: argparse.Namespace):
    """The run configuration from --config / --preset and the flags (not yet planned)."""
    return build(args)[0]


def build(args: argparse.Namespace):
    """(the run configuration from --config / --preset and the flags, not yet planned; the
    `PartialSetup` of the knobs they fix: the planner chooses the others)."""
    from tuneplan.app import assemble

    return assemble(run_request(args))


def plan_config(config, given, args: argparse.Namespace):
    """Let the planner choose the knobs `given` (a `PartialSetup`) leaves to it (`tuneplan.app`,
    the same solver as `tuneplan plan`). Returns (config, notes); raises UserError when nothing fits."""
    from tuneplan import app

    return app.plan_config(config, given, run_request(args))


def _target_text(args: argparse.Namespace) -> str | None:
    return f"--gpu {args.gpu}" if args.gpu else (f"--vram {args.vram}" if args.vram else None)


def check_machine(args: argparse.Namespace) -> tuple[list, list[str]]:
    """The GPUs NVML finds here, checked against --gpu / --vram (one-line refusal unless --force)."""
    from tuneplan import app
    from tuneplan.commands.arguments import target

    gpus, notes = app.check_machine(target(args), force=getattr(args, "force", False), what=_target_text(args))
    note = app.size_note(args.vram) if args.vram else None
    return gpus, ([note] if note else []) + notes


def run(args: argparse.Namespace) -> int:
    from tuneplan import app
    from tuneplan.events import FINAL_PHASES

    request = run_request(args)
    root = app.runs_root(args.runs_dir)  # a bad --runs-dir is one line, before anything is planned or said
    prepared = app.prepare(request, what=_target_text(args))
    config = prepared.config
    note = app.size_note(args.vram) if args.vram else None
    for line in ([note] if note else []) + list(prepared.notes):
        print(f"tuneplan: {line}", file=sys.stderr)
    run_dir = app.create_run(config, runs_root=root, checked=True)
    warning = config.checkpoint_warning(config.training.max_steps)
    if warning:
        print(f"tuneplan: warning: {warning}", file=sys.stderr)
    proc = app.start_run(run_dir, gpu_index=request.target.index, detach=not args.foreground)
    s = config.setup
    print(f"started run {run_dir.name} (pid {proc.pid}): {s.method}, micro-batch {s.micro_batch} x "
          f"accumulation {s.grad_accum}, seq len {s.seq_len}")
    print(f"  folder: {run_dir}")
    if not args.foreground:
        hint = f" --runs-dir {root}" if args.runs_dir else ""
        print(f"  follow it: tuneplan attach {run_dir.name}{hint}   list runs: tuneplan runs{hint}")
        print(f"  stop it:   tuneplan stop {run_dir.name}{hint}")
        return 0
    return follow(run_dir, proc, FINAL_PHASES, runs_dir=args.runs_dir)


def follow(run_dir: Path, proc, final_phases, *, runs_dir: str | None = None) -> int:
    """Print progress lines from the run's events until its process ends.

    Ctrl-C reaches the whole foreground group: the supervisor checkpoints at the end of the
    current step and stops (training/runner.py), and this says so; a second Ctrl-C leaves
    (exit 130) without waiting. The handler is installed here, as the supervisor installs its
    own, so the two agree even when the shell started this process with SIGINT ignored."""
    import signal
    import time

    from tuneplan.events import EventTail, read_status
    from tuneplan.services.command_line import resume_command

    presses = 0
    resume = resume_command(run_dir.name, runs_dir)  # what `tuneplan stop` says too

    def on_ctrl_c(_signum, _frame) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        print("tuneplan: stopping: checkpointing at the end of the current step (Ctrl-C again to leave); "
              f"continue later with `{resume}`", file=sys.stderr, flush=True)

    def show_new() -> None:
        for e in tail.read_new():
            line = format_event(e)
            if line:
                print(line, flush=True)

    tail = EventTail(run_dir)
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        while proc.poll() is None:
            show_new()
            time.sleep(0.3)
        show_new()
    except KeyboardInterrupt:
        print(f"tuneplan: left {run_dir.name} while it checkpoints; continue later with `{resume}`",
              file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    status = read_status(run_dir)
    if status is not None and status.phase == "stopped":
        print(f"tuneplan: {run_dir.name} stopped at step {status.step}; continue with `{resume}`", file=sys.stderr)
    return 0 if status is not None and status.phase in ("done", "stopped") else 3


def format_event(e: Event) -> str | None:
    """The progress line of an event for `train --foreground` and `demo` (its one `describe()`),
    indented under the phase lines; None for the details a progress stream leaves out."""
    from tuneplan.events import PhaseEvent, ReplanEvent

    if e.is_detail():
        return None
    line = e.describe()
    if line is None:
        return None
    return line if isinstance(e, (PhaseEvent, ReplanEvent)) else "  " + line
