"""`tuneplan compare`: the LoRA-vs-QLoRA bake-off on your own data.

    tuneplan compare --model M --dataset D [--max-steps N | --tokens N] [--methods lora,qlora,full]
    tuneplan compare --show [ID]        the table of a finished comparison again
    tuneplan compare --resume ID        continue one that was stopped (Ctrl-C) or crashed

It plans a short trial of each method with the same data, seed, effective batch, sequence
length and token budget, and runs them one after another on this machine. Each trial is a
normal run (its own folder, the detached supervisor `tuneplan train` starts: `attach`, `stop`
and `resume` work on it); this command follows its events. A method that does not fit is
skipped with the planner's reason, a trial that crashes keeps its reason, and the others go on.
When the trials are over it evaluates each (`tuneplan.training.evaluation.evaluate_run`, which
writes RUN/eval.json), prints one table and the recommendation, and saves the comparison in
RUNS/compare/<id>/compare.json (`tuneplan.services.compare`). Ctrl-C stops the current trial
with a checkpoint and says how to resume.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tuneplan.commands.arguments import finite_number, whole_number
from tuneplan.config import MAX_COUNT, MAX_EPOCHS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to compare")
    what.add_argument("--model", help="catalog name, Hub id or local model folder")
    what.add_argument("--dataset", help="local JSONL/JSON/CSV/Parquet file or Hub dataset id")
    what.add_argument("--methods", default="lora,qlora,full", metavar="M,M",
                      help="methods to try, comma-separated (default lora,qlora,full; one that does not fit is skipped)")
    what.add_argument("--trust-remote-code", action="store_true", default=None,
                      help="run Python code shipped with the model (off unless given)")
    budget = parser.add_argument_group("the trials (the same for every method)")
    steps = budget.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=whole_number("--max-steps", 1, MAX_COUNT), metavar="N",
                       help="optimizer steps per trial (default 30)")
    steps.add_argument("--tokens", type=whole_number("--tokens", 1, 10**15), metavar="N",
                       help="token budget per trial (steps = N / (effective batch x sequence length), rounded up)")
    budget.add_argument("--seed", type=whole_number("--seed", 0, 2**32 - 1), default=42)
    budget.add_argument("--lr", type=finite_number("--lr", 1e-12, 10.0), help="peak learning rate")
    budget.add_argument("--eval-fraction", type=finite_number("--eval-fraction", 1e-6, 0.9), default=0.1,
                        help="share of rows held out, evaluated after every trial (default 0.1)")
    budget.add_argument("--eval-examples", type=whole_number("--eval-examples", 1, MAX_COUNT), metavar="N",
                        help="score only the first N held-out rows (default: all; generating answers is the slow part)")
    budget.add_argument("--max-samples", type=whole_number("--max-samples", 1, MAX_COUNT),
                        help="use only the first N rows")
    budget.add_argument("--epochs", type=finite_number("--epochs", 1e-6, MAX_EPOCHS), default=1.0,
                        help="epochs of the full run the table projects time and cost for (default 1)")
    budget.add_argument("--price", type=finite_number("--price", 0.0, 1e6), metavar="USD",
                        help="price per GPU-hour for the cost column (default: the catalog card's)")
    target = parser.add_argument_group("target (for planning)")
    target.add_argument("--gpu", help="plan for this GPU (default: the GPUs NVML finds)")
    target.add_argument("--vram", help="plan for this much GPU memory, e.g. 24GiB")
    target.add_argument("--force", action="store_true",
                        help="train here even though --gpu/--vram names hardware NVML does not find")
    out = parser.add_argument_group("comparisons")
    out.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    out.add_argument("--show", nargs="?", const="latest", metavar="ID",
                     help="print a saved comparison again (default: the newest)")
    out.add_argument("--resume", metavar="ID", help="continue a stopped or crashed comparison")


def run(args: argparse.Namespace) -> int:
    from tuneplan.errors import UserError
    from tuneplan.services import compare as C
    from tuneplan.services import paths

    root = paths.runs_root(args.runs_dir)
    if args.show:
        folder, record = C.load(root, args.show)
        print(C.render(folder, record))
        return 0
    if args.resume:  # trials not run, stopped or crashed go on; evaluations that failed are tried again
        folder, record = C.load(root, args.resume)
    else:
        if not args.model:
            raise UserError("no model: give --model (catalog name, Hub id or folder)")
        if not args.dataset:
            raise UserError("no dataset: give --dataset (JSONL/JSON/CSV/Parquet file or Hub id)")
        methods = C.parse_methods(args.methods)
        folder, record = _plan_trials(args, methods, root)
    return _run_trials(folder, record, root, args)  # --resume: the stored trials, --eval-examples as saved


# -- planning the trials -------------------------------------------------------------------------
def _train_args(argv: list[str]) -> argparse.Namespace:
    """`tuneplan train ARGV` as train reads it (its flags, defaults and checks)."""
    from tuneplan.cli import _OneLineParser
    from tuneplan.commands import train

    parser = _OneLineParser(prog="tuneplan compare (a trial)")
    train.add_arguments(parser)
    return parser.parse_args(argv)


def _base_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--model", args.model, "--dataset", args.dataset, "--seed", str(args.seed),
            "--eval-fraction", repr(args.eval_fraction)]
    for flag, value in (("--lr", args.lr), ("--max-samples", args.max_samples), ("--gpu", args.gpu),
                        ("--vram", args.vram)):
        if value is not None:
            argv += [flag, str(value)]
    if args.trust_remote_code:
        argv.append("--trust-remote-code")
    if args.force:
        argv.append("--force")
    return argv


def prepare_trial(argv: list[str]) -> tuple[Any, list[str], int]:
    """The run configuration `tuneplan train ARGV` would launch, planned as train plans it
    (`tuneplan.commands.train`): (config, notes, GPUs here). UserError when it does not fit."""
    from tuneplan.commands import train
    from tuneplan.services import machine

    targs = _train_args(argv)
    config, given = train.build(targs)
    gpus, notes = train.check_machine(targs)
    config, plan_notes = train.plan_config(config, given, targs)
    setup, dtype_note = machine.setup_for_this_machine(config.setup, len(gpus))
    return replace(config, setup=setup), notes + plan_notes + ([dtype_note] if dtype_note else []), len(gpus)


def launch_trial(config: Any, root: Path) -> Path:
    """Start one trial as a normal detached run (`tuneplan.app.launch`, as `train` starts one):
    the one launch function of this command."""
    from tuneplan.app import launch

    return launch(config, runs_root=root, checked=True)[0]


def _plan_trials(args: argparse.Namespace, methods: tuple[str, ...], root: Path) -> tuple[Path, dict[str, Any]]:
    from tuneplan import app
    from tuneplan.commands import train
    from tuneplan.errors import UserError
    from tuneplan.services import compare as C
    from tuneplan.services import planning

    base = _base_argv(args)
    # the inputs every trial shares, checked once: bad ones are errors, not skipped trials
    first = _train_args(base + ["--method", methods[0], "--max-steps", "1"])
    config, _ = train.build(first)
    app.resolve_model(config.model.source)  # an unknown model: one line
    from tuneplan.services.launcher import check_dataset

    check_dataset(config)  # a missing or malformed local dataset: one line
    gpus, _ = train.check_machine(first)
    app.check_model_access(config)
    planned: dict[str, tuple[Any, list[str]] | str] = {}
    for method in methods:
        try:
            cfg, notes, _ = prepare_trial(base + ["--method", method, "--max-steps", "1"])
            planned[method] = (cfg, notes)
        except UserError as exc:
            planned[method] = f"skipped: {exc}"
    fitting = {m: p for m, p in planned.items() if not isinstance(p, str)}
    if not fitting:
        why = set(planned.values())
        if len(why) == 1:  # the same reason for every method: it is about the inputs
            raise UserError(str(why.pop()).removeprefix("skipped: "))
        raise UserError("no method fits: " + "; ".join(f"{m}: {str(p).removeprefix('skipped: ')}"
                                                        for m, p in planned.items()))
    # one sequence length and packing for all: the token budget of every trial is the same
    seq = min(cfg.setup.seq_len for cfg, _ in fitting.values())
    packing = next(iter(fitting.values()))[0].setup.packing
    same = ["--seq-len", str(seq), "--packing", "on" if packing else "off"]
    eff = next(iter(fitting.values()))[0].effective_batch()
    steps = args.max_steps or (math.ceil(args.tokens / (eff * seq)) if args.tokens else C.DEFAULT_MAX_STEPS)
    save_steps = max(1, steps // 2)  # a checkpoint half-way: a crash or Ctrl-C resumes from there
    folder = C.new_compare_dir(root, Path(config.model.source).name if Path(config.model.source).exists()
                               else args.model)
    cid = folder.name
    trials = []
    for method in methods:
        argv = base + ["--method", method, "--max-steps", str(steps), "--save-steps", str(save_steps), *same,
                       "--name", f"{cid}-{method}"]
        entry: dict[str, Any] = {"method": method, "run": None, "argv": argv, "skipped": None, "phase": None}
        if isinstance(planned[method], str):
            entry["skipped"] = planned[method]
        trials.append(entry)
    hw = "this machine's CPU" if not gpus else gpus[0].name
    price = args.price
    if price is None and args.gpu:
        price = planning.resolve_gpu(args.gpu).price_per_hour
    elif price is None and gpus and getattr(gpus[0], "catalog", None) is not None:
        price = gpus[0].catalog.price_per_hour
    record = {
        "id": cid, "created_at": time.time(), "model": args.model, "dataset": args.dataset,
        "model_key": C.source_key(args.model, "model"), "dataset_key": C.source_key(args.dataset, "dataset"),
        "methods": list(methods), "max_steps": steps, "seq_len": seq, "effective_batch": eff, "seed": args.seed,
        "epochs": args.epochs, "price_per_hour": price, "target": hw, "eval_examples": args.eval_examples,
        "trials": trials,
        "recommendation": None, "finished": False,
    }
    C.save(folder, record)
    print(f"bake-off {cid}: {', '.join(methods)} on {args.model}, {steps} steps x effective batch {eff} x seq {seq} "
          f"each, on {hw}")
    for t in trials:
        if t["skipped"]:
            print(f"  {t['method']}: {t['skipped']}")
    return folder, record


# -- running them --------------------------------------------------------------------------------
def _run_trials(folder: Path, record: dict[str, Any], root: Path, args: argparse.Namespace) -> int:
    from tuneplan.errors import UserError
    from tuneplan.events import last_checkpoint
    from tuneplan.services import compare as C
    from tuneplan.services import launcher, runs

    hint = f" --runs-dir {root}" if args.runs_dir else ""
    if args.resume:  # a trial that crashed, failed or was stopped is tried again (one that did not fit is not)
        for trial in record["trials"]:
            if trial.get("phase") in ("crashed", "failed", "stopped"):
                trial["skipped"] = None
    for trial in record["trials"]:
        if trial.get("skipped") or trial.get("phase") == "done":
            continue
        run_dir = root / trial["run"] if trial.get("run") else None
        try:
            if run_dir is not None and runs.is_running(run_dir):  # left running by a second Ctrl-C
                print(f"[{trial['method']}] following {run_dir.name}, still running")
            elif run_dir is not None and run_dir.is_dir() and last_checkpoint(run_dir) is not None:
                ckpt, _ = launcher.resume(run_dir)
                print(f"[{trial['method']}] resumed {run_dir.name} from {ckpt.name}")
            else:
                argv = list(trial["argv"])
                if run_dir is not None:  # a trial stopped before its first checkpoint: a new run
                    argv[argv.index("--name") + 1] = f"{argv[argv.index('--name') + 1]}-{int(time.time())}"
                config, _notes, _ = prepare_trial(argv)
                run_dir = launch_trial(config, root)
                trial["run"] = run_dir.name
                trial["plan"] = _describe(config)
                trial["num_gpus"] = config.setup.num_gpus
                print(f"[{trial['method']}] started run {run_dir.name}: {trial['plan']}")
        except UserError as exc:  # it no longer fits, the disk is full, ...: this trial only
            trial["skipped"] = f"could not start: {exc}"
            C.save(folder, record)
            print(f"[{trial['method']}] {trial['skipped']}", file=sys.stderr)
            continue
        C.save(folder, record)
        stopped = _follow(run_dir, trial["method"])
        measured = C.measure_run(run_dir)
        trial["phase"], trial["measured"] = measured["phase"], measured
        if measured["phase"] == "stopped" and not stopped:  # `tuneplan stop` from elsewhere: resumable
            print(f"[{trial['method']}] stopped at step {measured.get('step')} (the other trials go on; "
                  f"`tuneplan compare --resume {folder.name}{hint}` continues it)", file=sys.stderr)
        elif measured["phase"] != "done" and not stopped:
            trial["skipped"] = f"{measured['phase']}: {measured.get('error') or 'see its train.log'}"
            print(f"[{trial['method']}] {trial['skipped']} (the other trials go on)", file=sys.stderr)
        C.save(folder, record)
        if stopped:
            print(f"tuneplan: stopped trial {trial['method']} ({run_dir.name}) at step {measured.get('step')}; "
                  f"continue the bake-off with `tuneplan compare --resume {folder.name}{hint}`", file=sys.stderr)
            return 130
    try:
        _evaluate_all(folder, record, root)
    except KeyboardInterrupt:
        print(f"tuneplan: evaluation interrupted; the trials are done: `tuneplan compare --resume {folder.name}{hint}` "
              "evaluates the rest and prints the table", file=sys.stderr)
        return 130
    C.conclude(record)
    record["finished"] = all(t.get("skipped") or t.get("phase") == "done" for t in record["trials"])
    C.save(folder, record)
    print()
    print(C.render(folder, record))
    print(f"\nsaved: {folder / C.COMPARE_FILE}  (show it again: tuneplan compare --show {folder.name}{hint})")
    return 0


def _describe(config: Any) -> str:
    s = config.setup
    return (f"{s.method}, micro-batch {s.micro_batch} x {s.grad_accum}, seq {s.seq_len}, "
            f"{config.training.max_steps} steps")


def _follow(run_dir: Path, method: str) -> bool:
    """Print the trial's progress until its process ends. Ctrl-C asks it to stop (checkpoint
    at the end of the step) and waits for that; a second Ctrl-C leaves at once. Returns whether
    it was stopped from here."""
    import signal

    from tuneplan.commands.train import format_event
    from tuneplan.errors import UserError
    from tuneplan.events import FINAL_PHASES, EventTail, effective_phase, live_pids, read_status
    from tuneplan.services import runs

    presses = 0

    def on_ctrl_c(_signum, _frame) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt

    tail = EventTail(run_dir)
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    asked = False
    try:
        while True:
            for e in tail.read_new():
                line = format_event(e)
                if line:
                    print(f"[{method}] {line.strip()}", flush=True)
            status = read_status(run_dir)
            if effective_phase(status) in FINAL_PHASES and not live_pids(status):
                break
            if presses and not asked:
                try:
                    runs.request_stop(run_dir)
                    asked = True
                    print(f"tuneplan: stopping trial {method}: checkpointing at the end of the current step "
                          "(Ctrl-C again to leave it running)", file=sys.stderr, flush=True)
                except UserError:
                    pass  # not started yet: asked again on the next turn
            time.sleep(0.3)
    except KeyboardInterrupt:
        print(f"tuneplan: left trial {method} ({run_dir.name}) running: `tuneplan attach {run_dir.name}`",
              file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return asked


def _evaluate_all(folder: Path, record: dict[str, Any], root: Path) -> None:
    """Evaluate every finished trial that has no eval result yet (RUN/eval.json is reused)."""
    import json

    from tuneplan.services import compare as C

    for trial in record["trials"]:
        if trial.get("skipped") or trial.get("phase") != "done" or (trial.get("eval") or {}).get("eval_loss") is not None:
            continue
        run_dir = root / trial["run"]
        path = run_dir / C.EVAL_FILE
        print(f"[{trial['method']}] evaluating {run_dir.name} on its held-out split...", flush=True)
        try:
            if not path.is_file():
                evaluate(run_dir, record.get("eval_examples"))
            saved = json.loads(path.read_text(encoding="utf-8"))
            if C.scored_other_data(saved):  # `tuneplan eval RUN --data`: not the split the trials share
                trial.pop("eval", None)
                trial["eval_error"] = (f"{path} scored {saved.get('data_source') or 'other data'} (--data), not the "
                                       f"held-out split: `tuneplan eval {run_dir.name} --force` evaluates the split")
                print(f"[{trial['method']}] {trial['eval_error']}", file=sys.stderr)
                C.save(folder, record)
                continue
            trial["eval"] = C.eval_summary(saved)
            trial.pop("eval_error", None)
        except Exception as exc:  # one trial's evaluation failing must not lose the others
            trial["eval_error"] = f"evaluation failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            print(f"[{trial['method']}] {trial['eval_error']}", file=sys.stderr)
        C.save(folder, record)


def evaluate(run_dir: Path, max_examples: int | None = None) -> None:
    """Evaluate a finished run: `tuneplan.training.evaluation.evaluate_run` writes RUN/eval.json
    (`max_examples`: the first N held-out rows only)."""
    from tuneplan.training.evaluation import evaluate_run

    evaluate_run(run_dir, max_examples=max_examples, progress=lambda text: print(f"  {text}", flush=True))
