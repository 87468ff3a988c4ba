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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    hp = parser.add_argument_group("training")
    hp.add_argument("--epochs", type=float)
    hp.add_argument("--max-steps", type=int)
    hp.add_argument("--lr", type=float, help="peak learning rate")
    hp.add_argument("--warmup-ratio", type=float)
    hp.add_argument("--eval-fraction", type=float, help="share of rows held out for the eval loss")
    hp.add_argument("--save-steps", type=int, help="optimizer steps between checkpoints")
    hp.add_argument("--save-every", metavar="DURATION",
                    help="also checkpoint whenever this much time has passed, e.g. 30m, 1h (spot instances)")
    hp.add_argument("--save-total-limit", type=int, help="checkpoints kept")
    hp.add_argument("--logging-steps", type=int)
    hp.add_argument("--seed", type=int)
    hp.add_argument("--max-samples", type=int, help="use only the first N rows")
    hp.add_argument("--overlong", choices=["truncate", "drop"], help="samples longer than --seq-len")
    hp.add_argument("--max-retries", type=int, help="out-of-memory re-plans allowed (default 3)")
    hp.add_argument("--allow-qlora", action="store_true", default=None,
                    help="let OOM recovery switch a LoRA run to QLoRA")
    from tuneplan.config import TRACKERS

    hp.add_argument("--report-to", choices=list(TRACKERS),
                    help="experiment tracker the trainer logs to (default none; docs/tracking-and-alerts.md)")
    alerts = parser.add_argument_group("alerts (docs/tracking-and-alerts.md)")
    alerts.add_argument("--notify", metavar="URL", help="webhook (JSON POST) or ntfy topic URL for done, failed, "
                        "crashed, stalled, NaN and re-plan alerts (default: the user config's; `off` for none)")
    alerts.add_argument("--stall-minutes", type=float, metavar="M", help="alert when no step for this long (default 10)")
    target = parser.add_argument_group("target (for planning)")
    target.add_argument("--gpu", help="plan for this GPU (default: the GPUs NVML finds)")
    target.add_argument("--vram", help="plan for this much GPU memory, e.g. 24GiB")
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


def load_preset(preset, args: argparse.Namespace):
    """A preset (name or loaded `Preset`) re-fitted to this machine (`tuneplan.services.presets`)."""
    from tuneplan.services import presets

    return presets.load_preset_config(preset, gpu=args.gpu, vram=args.vram)


def build_config(args: argparse.Namespace):
    """The run configuration from --config / --preset and the flags (not yet planned)."""
    return build(args)[0]


def build(args: argparse.Namespace):
    """(the run configuration from --config / --preset and the flags, not yet planned; the
    `PartialSetup` of the knobs they fix: the planner chooses the others)."""
    from tuneplan.config import RunConfig, config_from_dict, read_toml_text
    from tuneplan.errors import UserError
    from tuneplan.knobs import PLANNED, PartialSetup

    if args.config and args.preset:
        raise UserError("give either --config or --preset, not both")
    file = PartialSetup()
    if args.config:
        data, text = read_toml_text(Path(args.config))
        config = config_from_dict(data, where=str(args.config), text=text)
        file = PartialSetup.from_setup(config.setup, data.get("setup") or {})
    elif args.preset:
        from tuneplan.services.presets import find_preset, with_knobs

        preset = find_preset(args.preset)
        if not args.trust_remote_code:  # refuse before the re-fit prints its notes
            from tuneplan.services.models import remote_code_request

            asked = preset.config.model
            remote_code_request(args.model or asked.source, requested=asked.trust_remote_code, granted=False)
        # knob flags over a preset are re-fitted with it, so its summary ("Kept: method ...") is the run's
        over = PartialSetup.from_args(args).fixed()
        if over:
            from tuneplan.knobs import BY_NAME

            print("tuneplan: re-fitting the preset with your flags over it: "
                  + ", ".join(f"{BY_NAME[k].flag} {BY_NAME[k].show(v)}" for k, v in over.items()), file=sys.stderr)
        preset = with_knobs(preset, over)
        config = load_preset(preset, args)
        # a named preset is a complete, already re-fitted configuration; a preset file fixes its [setup] keys
        keys = preset.setup_keys if Path(args.preset).suffix else PLANNED
        file = PartialSetup.from_setup(config.setup, keys)
    else:
        config = RunConfig()
    given = given_setup(args, file)
    if args.model:
        config = replace(config, model=replace(config.model, source=args.model))
    data = {k: v for k, v in (("source", args.dataset), ("eval_fraction", args.eval_fraction),
                              ("max_samples", args.max_samples), ("overlong", args.overlong)) if v is not None}
    training = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps),
                                  ("learning_rate", args.lr), ("warmup_ratio", args.warmup_ratio),
                                  ("save_steps", args.save_steps), ("save_total_limit", args.save_total_limit),
                                  ("save_every", getattr(args, "save_every", None)),
                                  ("logging_steps", args.logging_steps), ("seed", args.seed),
                                  ("report_to", args.report_to)) if v is not None}
    notify: dict[str, Any] = {k: v for k, v in (("url", "" if args.notify == "off" else args.notify),
                                ("stall_minutes", args.stall_minutes)) if v is not None}
    recovery = {k: v for k, v in (("max_retries", args.max_retries), ("allow_qlora", args.allow_qlora))
                if v is not None}
    config = replace(config, data=replace(config.data, **data), training=replace(config.training, **training),
                     recovery=replace(config.recovery, **recovery), setup=given.apply(config.setup),
                     notify=replace(config.notify, **notify))
    if getattr(args, "save_every", None) is not None:
        from tuneplan.durations import parse_duration

        try:
            parse_duration(args.save_every)
        except ValueError as exc:
            raise UserError(f"--save-every {exc}") from None
    if args.name:
        config = replace(config, name=args.name)
    if not config.model.source:
        raise UserError("no model: give --model (catalog name, Hub id or folder), --config or --preset")
    if not config.data.source:
        raise UserError("no dataset: give --dataset (JSONL/JSON/CSV/Parquet file or Hub id), --config or --preset")
    config = config.validate()  # every number finite and in range before anything is planned or started
    if args.vram is not None:  # read here even when every knob is fixed and nothing is planned
        from tuneplan.services.planning import parse_size

        parse_size(args.vram)
    # a file may ask for the model's own code; only --trust-remote-code grants it
    from tuneplan.services.models import remote_code_request
    from tuneplan.services.presets import resolve_sources

    config = resolve_sources(config)  # tuneplan:tiny / tuneplan:sample-chat -> their folder and file
    trust = remote_code_request(config.model.source, requested=config.model.trust_remote_code,
                                granted=bool(args.trust_remote_code))
    return replace(config, model=replace(config.model, trust_remote_code=trust)), given


def plan_config(config, given, args: argparse.Namespace):
    """Let the planner choose the knobs `given` (a `PartialSetup`) leaves to it
    (`tuneplan.services.planning`, the same solver as `tuneplan plan`). Returns (config, notes);
    raises UserError when nothing fits."""
    auto = given.auto()
    if not auto:
        return config, []
    from tuneplan.config import PredictionConfig
    from tuneplan.errors import UserError
    from tuneplan.knobs import FIXABLE
    from tuneplan.services import planning

    fixed = {k: getattr(config.setup, k) for k in FIXABLE if given.is_fixed(k)}
    method = "auto" if "method" in auto else config.setup.method
    mb, ga = config.setup.micro_batch, config.setup.grad_accum
    if not (args.gpu or args.vram):
        from tuneplan.services.gpu import default_probe

        probe = default_probe()
        # no GPU and no target: the bundled tiny model is planned for the CPU (the planning
        # service's rule, as in `tuneplan plan`); any other needs a GPU
        if not probe.probe() and not planning.is_bundled_tiny(
                planning.resolve(planning.PlanRequest(model=config.model.source))):
            raise UserError(f"no NVIDIA GPU here to train {config.model.source} on ({probe.status()}): plan "
                            "for a card with `tuneplan plan --gpu NAME`, or train here anyway with --gpu NAME "
                            "or --vram SIZE and --force")
    host_ram = None
    if args.gpu or args.vram:  # planned for a named card, but the run (and its offloaded activations) is here
        from tuneplan.services.gpu import ram_bytes

        host_ram = ram_bytes()[1]
    request = planning.PlanRequest(
        seq_len_max=given.longest(), host_ram_bytes=host_ram,
        model=config.model.source, gpu=args.gpu, vram_bytes=planning.parse_size(args.vram) if args.vram else None,
        method=method, fixed=fixed, epochs=config.training.epochs, dataset_source=config.data.source,
        effective_batch=mb * ga if given.is_fixed("micro_batch") and given.is_fixed("grad_accum") else None,
        # training runs here: a catalog --gpu / --vram target means one such GPU unless --gpus says more
        gpus=None if ("num_gpus" in fixed or not (args.gpu or args.vram)) else 1,
    )
    outcome = planning.plan(request)
    result = outcome.result
    if not result.fits:
        hint = f"; {result.suggestions[0]}" if result.suggestions else ""
        raise UserError(f"no configuration of {config.model.source} fits {outcome.hardware.gpu.name}{hint} "
                        f"(see `tuneplan plan --model {config.model.source}`)")
    choice = result.choice
    config = replace(config, setup=choice.setup,
                     prediction=PredictionConfig(torch_peak_bytes=choice.memory.torch_peak_bytes,
                                                 device_bytes=choice.memory.device_bytes))
    notes = list(outcome.notes) + list(result.warnings) + [f"planned: {choice.describe()}"]
    return config, notes


def check_machine(args: argparse.Namespace) -> tuple[list, list[str]]:
    """The GPUs NVML finds here, checked against --gpu / --vram (one-line refusal unless --force)."""
    from tuneplan.services import machine, planning

    vram = planning.parse_size(args.vram) if args.vram else None
    flag = f"--gpu {args.gpu}" if args.gpu else (f"--vram {args.vram}" if args.vram else None)
    gpus, notes = machine.check_target_here(args.gpu, vram, force=getattr(args, "force", False), flag_text=flag)
    note = planning.size_note(args.vram) if args.vram else None
    return gpus, ([note] if note else []) + notes


def check_model_access(config) -> None:
    """A gated catalog or Hub model needs a Hub token (and access) before anything launches."""
    from tuneplan.services import models

    models.check_source_access(config.model.source)


def run(args: argparse.Namespace) -> int:
    from tuneplan.events import FINAL_PHASES
    from tuneplan.services import launcher, machine, paths

    config, given = build(args)
    root = paths.runs_root(args.runs_dir)  # a bad --runs-dir is refused before any planning is printed
    gpus, notes = check_machine(args)
    check_model_access(config)
    config, plan_notes = plan_config(config, given, args)
    setup, dtype_note = machine.setup_for_this_machine(config.setup, len(gpus))
    config = replace(config, setup=setup)
    for note in notes + plan_notes + ([dtype_note] if dtype_note else []):
        print(f"tuneplan: {note}", file=sys.stderr)
    run_dir = launcher.prepare_run(config, root)
    warning = config.checkpoint_warning(config.training.max_steps)
    if warning:
        print(f"tuneplan: warning: {warning}", file=sys.stderr)
    proc = launcher.start_process(run_dir, detach=not args.foreground)
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
