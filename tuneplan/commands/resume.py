"""`tuneplan resume RUN`: continue a stopped, failed or crashed run from its last checkpoint.

The run keeps its configuration (after any out-of-memory re-plan), so micro-batch,
accumulation and the effective batch are those the checkpoint was trained with."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--foreground", action="store_true", help="stay attached and print progress")


def run(args: argparse.Namespace) -> int:
    from tuneplan.commands.train import follow
    from tuneplan.config import load_config
    from tuneplan.events import CONFIG_FILE, FINAL_PHASES
    from tuneplan.app import resume

    run_dir, ckpt, proc = resume(args.run, args.runs_dir, detach=not args.foreground)
    s = load_config(run_dir / CONFIG_FILE).setup
    print(f"resumed {run_dir.name} from {ckpt.name} (pid {proc.pid}): micro-batch {s.micro_batch} x "
          f"accumulation {s.grad_accum} = effective batch {s.effective_batch()}")
    if args.foreground:
        return follow(run_dir, proc, FINAL_PHASES, runs_dir=args.runs_dir)
    return 0
