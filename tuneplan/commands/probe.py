"""`tuneplan probe`: measure the plan on this machine for a few optimizer steps, before the long run.

    tuneplan probe --model llama-3.1-8b --method qlora [plan flags]   # plan, then measure the choice
    tuneplan probe --preset NAME                                     # a preset, re-fitted here
    tuneplan probe --config RUN.toml                                 # a run configuration as it is
    tuneplan probe ... --random-weights                              # config.json only, no download

It plans like `tuneplan plan` (the same flags and parser) for the GPU NVML finds here (or the
CPU when there is none), trains `--warmup-steps` + `--steps` optimizer steps of the chosen
configuration through the real training path (`tuneplan.training.probe`), prints the
measured torch peak, reserved memory, nvidia-smi memory, tokens/s and seconds per step beside
the prediction with each error, then advice (`tuneplan.services.probing`). It writes
`probe.json` (`--out`) and, with `--save-evidence PRESET`, the measurement into that preset's
`[evidence]`. Foreground: it takes a minute or two. Exit codes: 0 measured, 1 the plan does not
fit here, 2 bad input, 3 the probe failed (out of memory: the plan is wrong for this card).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from tuneplan.commands.arguments import whole_number
from tuneplan.config import MAX_COUNT
from tuneplan.formatting import size

EXIT_PROBE_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tuneplan.commands import plan

    plan.add_arguments(parser)  # the plan flags, --preset and --json, as `tuneplan plan` has them

    def one_line_error(message: str) -> NoReturn:
        print(f"tuneplan: error: probe: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = one_line_error  # type: ignore[method-assign]
    g = parser.add_argument_group("probe")
    g.add_argument("--config", metavar="RUN.toml", help="probe this run configuration as it is (no planning)")
    g.add_argument("--random-weights", action="store_true",
                   help="build the model from config.json with random weights: nothing is downloaded")
    g.add_argument("--steps", type=whole_number("--steps", 1, MAX_COUNT), default=3, metavar="N",
                   help="measured optimizer steps (default 3)")
    g.add_argument("--warmup-steps", type=whole_number("--warmup-steps", 0, MAX_COUNT), default=1, metavar="N",
                   help="optimizer steps before measuring (default 1)")
    g.add_argument("--out", default="probe.json", metavar="PATH", help="where to write the report (default probe.json)")
    g.add_argument("--save-evidence", metavar="PRESET", help="record the measurement in this preset's [evidence]")
    g.add_argument("--force", action="store_true", help="with --save-evidence: replace evidence already there")
    g.add_argument("--cpu", action="store_true", help="probe on the CPU even when there is a GPU")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (real weights only; off unless given)")


def _refuse_knobs(args: argparse.Namespace, what: str) -> None:
    from tuneplan.commands.plan import KNOB_FLAGS
    from tuneplan.errors import UserError

    given = [k for k in KNOB_FLAGS if k != "model" and getattr(args, k, None) not in (None, False, "auto")]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} cannot be combined with {what}: it sets them (edit it, or probe with plan flags)")


def _hardware(args: argparse.Namespace, cuda: bool):
    """The hardware the prediction is made for: --gpu/--vram as given, else this machine."""
    from tuneplan import app
    from tuneplan.commands.arguments import gpu_index

    index = gpu_index(args.gpu_index)  # read first: a bad value is an error here, not ignored off a GPU
    if args.gpu or args.vram:
        hw, notes, _ = app.resolve_hardware(args.gpu, app.parse_size(args.vram) if args.vram else None)
        return hw, notes + [f"predicted for {hw.gpu.name} (--gpu/--vram) and measured on this machine"]
    if not cuda:
        hw = app.cpu_hardware()
        return hw, [f"no CUDA GPU here: probing on the CPU ({size(hw.usable_bytes())} of RAM available)"]
    hw, notes, _ = app.resolve_hardware(index=index, gpus=1)
    return hw, notes




def _planned(args: argparse.Namespace, hardware, random_weights: bool):
    """(model label, setup, resolved model, load source, safety margin, source label, notes)."""
    from tuneplan import app
    from tuneplan.commands.arguments import safety_margin
    from tuneplan.errors import EXIT_DOES_NOT_FIT, UserError
    from tuneplan.services import presets as P

    def does_not_fit(text: str) -> UserError:
        exc = UserError(text)
        exc.exit_code = EXIT_DOES_NOT_FIT
        return exc

    if args.config and args.preset:
        raise UserError("give either --config or --preset, not both")
    margin = safety_margin(args.safety_margin)
    if args.config:
        from tuneplan.config import load_config

        _refuse_knobs(args, "--config")
        config = load_config(Path(args.config))
        if args.model:
            config = replace(config, model=replace(config.model, source=args.model))
        config = P.resolve_sources(config, build=not random_weights)
        resolved = app.resolve_model(config.model.source)
        return (resolved.name, config.setup, resolved, config.model.source, margin, f"config {args.config}", [],
                config.model.trust_remote_code, _p99(config.data.source, resolved))
    if args.preset:
        _refuse_knobs(args, "--preset")
        preset = P.find_preset(args.preset)
        fit = P.refit(preset, hardware=hardware, safety_margin=margin, build_sources=not random_weights)
        notes = fit.summary_lines()
        if not fit.fits:
            raise does_not_fit(f"preset {preset.name} does not fit {hardware.gpu.name}: "
                               f"{fit.reasons[0] if fit.reasons else 'see tuneplan plan --preset ' + preset.name}")
        return (preset.name, fit.config.setup, fit.outcome.model, fit.config.model.source, margin,
                f"preset {preset.name}", notes, fit.config.model.trust_remote_code,
                _p99(fit.config.data.source, fit.outcome.model))
    from tuneplan.commands.plan import build_request

    request = build_request(args)
    outcome = app.plan(replace(request, target=app.Target(hardware=hardware), one_gpu=True))
    result = outcome.result
    if not result.fits:
        hint = f"; {result.suggestions[0]}" if result.suggestions else ""
        raise does_not_fit(f"no configuration of {outcome.model.name} fits {hardware.gpu.name}{hint}")
    stats = outcome.request.dataset
    return (outcome.model.name, result.choice.setup, outcome.model, outcome.model.source, margin, "flags",
            list(outcome.notes) + [f"planned: {result.choice.describe()}"], False, stats and stats.p99_tokens)


def _p99(source: str, model) -> int | None:
    """The 99th-percentile example length (tokens) of a config's / preset's dataset, or None
    when it names none or it cannot be read here (the advice then suggests no longer sequence)."""
    from tuneplan.errors import UserError
    from tuneplan.services import planning

    if not source:
        return None
    try:
        return planning.dataset_stats(source, model)[0].p99_tokens
    except (UserError, OSError):
        return None


def _apply(args: argparse.Namespace, planned, dataset: str | None):
    """setup -> the `tuneplan train` command that trains it, started as this probe was given:
    `--preset NAME` and the knobs that change; a `--config` file's run in full (the wizard probes
    a configuration written to a temporary file, which is gone when its report is read); else
    every knob of the plan."""
    import shlex

    from tuneplan.services.command_line import DATASET_PLACEHOLDER, changed_flags, train_command

    if args.preset:
        return lambda s: shlex.join(["tuneplan", "train", "--preset", args.preset, *changed_flags(planned, s)])
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, TrainingConfig

    if args.config:
        from tuneplan.config import load_config

        config = load_config(Path(args.config))
        if args.model:
            config = replace(config, model=replace(config.model, source=args.model))
        return lambda s: train_command(replace(config, setup=s))

    def command(s) -> str:
        epochs = getattr(args, "epochs", None)
        return train_command(RunConfig(model=ModelConfig(source=args.model),
                                       data=DataConfig(source=dataset or DATASET_PLACEHOLDER), setup=s,
                                       training=TrainingConfig(epochs=float(epochs) if epochs else 1.0)))
    return command


def run(args: argparse.Namespace) -> int:
    import json

    from tuneplan.errors import UserError

    steps, warmup = args.steps, args.warmup_steps
    if warmup + steps < 2:
        raise UserError("the peaks are read after the second optimizer step: --warmup-steps + --steps must be >= 2")
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything imports torch
    from tuneplan.training.runner import QUIET_ENV

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    import torch

    from tuneplan.services import probing

    cuda = torch.cuda.is_available()
    hardware, notes = _hardware(args, cuda)
    model, setup, resolved, source, margin, how, plan_notes, remote, p99 = _planned(args, hardware,
                                                                                    args.random_weights)
    planned = setup
    if setup.num_gpus > 1 or setup.strategy == "fsdp":
        raise UserError(f"the probe measures one GPU; this plan uses {setup.num_gpus} ({setup.strategy}): "
                        "plan it with --gpus 1, or probe one GPU's share with tuneplan train")
    if not cuda:  # the launch's CPU rule (float32), as `train` applies it
        from tuneplan.services.machine import setup_for_this_machine

        setup, dtype_note = setup_for_this_machine(setup, 0)
        if dtype_note:
            notes.append(dtype_note)
    for line in notes + plan_notes:
        print(f"tuneplan probe: {line}", file=sys.stderr)
    prediction = probing.predict(resolved.spec, hardware, setup, on_cpu=not cuda)

    from tuneplan.training.probe import measure
    from tuneplan.training.runner import environment_facts

    def log(line: str) -> None:
        print(f"tuneplan probe: {line}", file=sys.stderr, flush=True)

    try:
        m = measure(source, setup, config_dict=dict(resolved.config), random_weights=args.random_weights,
                    steps=steps, warmup_steps=warmup, trust_remote_code=args.trust_remote_code or remote, log=log)
    except torch.OutOfMemoryError as exc:
        from tuneplan.training.oom import first_line

        print(f"tuneplan: error: probe ran out of memory ({first_line(exc)[:160]}): this configuration does not fit "
              f"here; predicted {size(prediction.device_bytes or prediction.torch_peak_bytes)}", file=sys.stderr)
        return EXIT_PROBE_FAILED
    measured = m.to_dict()
    measured["environment"] = environment_facts()
    report = probing.ProbeReport(model=model, random_weights=args.random_weights, setup=setup,
                                 hardware_name=hardware.gpu.name, usable_bytes=hardware.usable_bytes(),
                                 safety_margin=margin, prediction=prediction, measured=measured,
                                 notes=notes + plan_notes + m.notes, source=how)
    report.advice = probing.advise(resolved.spec, hardware, setup, prediction, measured, safety_margin=margin,
                                   on_cpu=not cuda, dataset_p99=p99,
                                   apply=_apply(args, planned, getattr(args, "dataset", None)))
    path, replaced = probing.write_report(report, Path(args.out))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from tuneplan.commands.terminal import output_width, wrap

        width = output_width(sys.stdout)
        for line in report.render().splitlines():
            body = line.lstrip()
            indent = line[:len(line) - len(body)]
            if body.startswith("- " + probing.APPLY) and width is not None and len(line) > width:
                import shlex

                from tuneplan.services.command_line import wrap_command

                print(f"{indent}- {probing.APPLY.strip()}")  # the command on its own lines, pasteable
                print(wrap_command(shlex.split(body[len("- " + probing.APPLY):]), width, indent + "  "))
            elif width is None or len(line) <= width or not body:
                print(line)
            else:  # long sentences of the advice: wrapped at spaces, bullets hang
                print("\n".join(wrap(body, width, indent, indent + "  ")))
        sys.stdout.flush()
    print(f"tuneplan probe: wrote {path}" + (" (replaced the previous report)" if replaced else ""), file=sys.stderr)
    if args.save_evidence:
        saved = probing.save_evidence(args.save_evidence, report, force=args.force)
        print(f"tuneplan probe: saved the measurement in preset {args.save_evidence}'s [evidence]: {saved}",
              file=sys.stderr)
    return 0
