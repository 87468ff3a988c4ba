"""`tuneplan demo`: the whole product on any machine, offline, in about a minute.

It builds the bundled tiny Llama-style model (`tuneplan.training.tiny`, cached after the
first time), takes the bundled sample chat dataset, re-fits the `tiny-cpu` preset to this
machine (the GPU NVML finds, else the CPU, which it says), launches a real detached training
run through the launcher, and opens the live dashboard. Without a terminal (or with
`--no-dashboard`) it follows the run, printing progress lines, and ends with the loss at the
start and at the end. No network: the Hub is switched off for the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tuneplan.commands.arguments import whole_number
from tuneplan.config import MAX_COUNT

PRESET = "tiny-cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-dashboard", action="store_true",
                        help="print progress lines instead of opening the dashboard (the default without a terminal)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the user data folder)")
    parser.add_argument("--max-steps", type=whole_number("--max-steps", 1, MAX_COUNT), metavar="N",
                        help="optimizer steps (default: the preset's, 80)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")


def _say(text: str = "") -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tuneplan import app
    from tuneplan.errors import UserError
    from tuneplan.services import presets as P

    # offline, whatever the environment says: the demo needs nothing from the network
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TQDM_DISABLE"):
        os.environ[key] = "1"
    started = time.monotonic()
    _say("tuneplan demo: a real fine-tuning run of a tiny model on this machine, offline.")
    # always the shipped preset: a project or user copy of the same name must not change the demo
    preset = P.load_preset_file(P.shipped_dir() / f"{PRESET}.toml", "shipped")

    # 1. the tiny model (built once, then cached)
    t0 = time.monotonic()
    cached = P.tiny_model_dir(build=False)
    model_dir = P.tiny_model_dir(build=True)
    how = "cached" if (cached == model_dir) else f"built in {time.monotonic() - t0:.0f} s"
    _say(f"[1/4] model    tiny Llama-style model ({_params(model_dir)}), {how}: {model_dir}")
    from tuneplan.data import SAMPLE_CHAT

    rows = sum(1 for line in SAMPLE_CHAT.read_text(encoding="utf-8").splitlines() if line.strip())
    _say(f"[2/4] dataset  bundled sample chat dataset, {rows} conversations: {SAMPLE_CHAT}")

    # 2. plan for this machine
    hardware = P.cpu_hardware() if args.cpu else None
    fit = P.refit(preset, hardware=hardware, build_sources=True)
    hw = fit.outcome.hardware
    why = "as asked (--cpu)" if args.cpu else "no GPU found"
    if hw.gpu.key != P.CPU and not _torch_has_cuda():
        why = f"NVML sees {hw.gpu.name} but this torch build has no CUDA"
        fit = P.refit(preset, hardware=P.cpu_hardware(), build_sources=True)
        hw = fit.outcome.hardware
    if hw.gpu.key == P.CPU:
        _say(f"[3/4] plan     {why}: training on the CPU ({os.cpu_count() or 1} cores, "
             f"{hw.usable_bytes() / 2**30:.1f} GiB RAM available)")
    else:
        _say(f"[3/4] plan     GPU found: {hw.gpu.name}, {hw.usable_bytes() / 2**30:.1f} GiB free")
    s = fit.config.setup
    m = fit.outcome.result.choice.memory
    _say(f"               {fit.outcome.result.choice.describe()}; predicted {m.device_bytes / 2**20:.0f} MiB "
         "on the device (nvidia-smi; torch peak "
         f"{m.torch_peak_bytes / 2**20:.0f} MiB) "
         f"({'fits' if fit.fits else 'DOES NOT FIT'}); re-fit of preset {preset.name}: {fit.change_text()}")
    if not fit.fits:
        raise UserError(f"the demo's tiny model does not fit on {hw.gpu.name}: " + "; ".join(fit.reasons))
    config = fit.config
    if args.max_steps is not None:
        config = replace(config, training=replace(config.training, max_steps=args.max_steps))
    if hw.gpu.key == P.CPU:  # the one CPU rule (float32), as `train` applies it
        from tuneplan.services.machine import setup_for_this_machine

        config = replace(config, setup=setup_for_this_machine(config.setup, 0)[0])

    # 3. a real detached run
    root = app.runs_root(args.runs_dir)
    run_dir, proc = app.launch(replace(config, name=None), runs_root=root, checked=True)
    _say(f"[4/4] run      {run_dir.name} started, detached (pid {proc.pid}): {config.training.max_steps} steps, "
         f"micro-batch {s.micro_batch} x {s.grad_accum}, sequence length {s.seq_len}")
    _say(f"               folder: {run_dir}")
    hint = f" --runs-dir {root}" if args.runs_dir else ""

    use_dashboard = not args.no_dashboard and sys.stdout.isatty() and sys.stdin.isatty()
    if use_dashboard:
        from tuneplan.commands.attach import print_detached
        from tuneplan.ui.app import create_app
        from tuneplan.ui.services import default_services

        dashboard = create_app(default_services(root if args.runs_dir else None), run_dir=run_dir)
        result = dashboard.run()
        print_detached(result)
        return _summary(run_dir, started, hint, waited=False)
    _say("               following it here (no dashboard); Ctrl-C leaves it running")
    if not _follow(run_dir, proc):
        _say(f"demo: left run {run_dir.name} training on its own; follow it: tuneplan attach {run_dir.name}{hint}")
        return 0
    return _summary(run_dir, started, hint, waited=True)


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _follow(run_dir, proc) -> bool:
    """Print the run's progress lines until its process ends; False on Ctrl-C (the run, in its
    own session, keeps going)."""
    from tuneplan.commands.train import format_event
    from tuneplan.events import EventTail

    tail = EventTail(run_dir)
    try:
        while True:
            ended = proc.poll() is not None
            for event in tail.read_new():
                line = format_event(event)
                if line:
                    _say(line)
            if ended:
                return True
            time.sleep(0.3)
    except KeyboardInterrupt:
        return False


def _params(model_dir) -> str:
    import json
    from pathlib import Path

    try:
        from planner.spec import spec_from_config

        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        n = spec_from_config(cfg, "tiny").parameter_count()
        return f"{n / 1e6:.2f}M parameters, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}"
    except Exception:  # the count is decoration: never fail the demo for it
        return "a few hundred thousand parameters"


def loss_curve(run_dir) -> list[float]:
    """The logged training losses of a run, in order."""
    from tuneplan.events import LogEvent, read_events

    return [e.loss for e in read_events(run_dir) if isinstance(e, LogEvent) and e.loss is not None]


def _summary(run_dir, started: float, hint: str, *, waited: bool) -> int:
    from tuneplan.events import effective_phase, read_status

    status = read_status(run_dir)
    phase = effective_phase(status)
    losses = loss_curve(run_dir)
    took = time.monotonic() - started
    if phase == "done":
        if len(losses) >= 2:
            trend = "falling" if losses[-1] < losses[0] else "NOT falling"
            curve = f"loss {losses[0]:.3f} -> {losses[-1]:.3f} ({trend})"
        else:  # a short run logs fewer losses than a trend needs (training.logging_steps)
            curve = f"loss {losses[-1]:.3f}" if losses else "no loss logged yet"
        _say(f"demo: run {run_dir.name} done in {took:.0f} s: {curve} over {status.step if status else 0} steps")
        _say(f"      saved {'model' if (run_dir / 'model').is_dir() else 'adapter'}, checkpoints and events: {run_dir}")
        _say(f"      replay it: tuneplan attach {run_dir.name}{hint}    list runs: tuneplan runs{hint}")
        return 0
    if not waited and phase not in ("done", "failed", "stopped", "crashed"):
        _say(f"demo: run {run_dir.name} keeps training ({phase}); reattach: tuneplan attach {run_dir.name}{hint}")
        return 0
    error = f": {status.error}" if status is not None and status.error else ""
    _say(f"demo: run {run_dir.name} ended {phase}{error}; see {run_dir / 'train.log'}")
    return 3
