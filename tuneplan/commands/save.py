"""`tuneplan save RUN`: ask a running run to save a checkpoint at its next step (it keeps going)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")


def run(args: argparse.Namespace) -> int:
    from tuneplan.services import paths, runs

    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    runs.request_save(run_dir)
    print(f"{run_dir.name}: checkpoint requested; it is saved at the end of the next optimizer step")
    return 0
