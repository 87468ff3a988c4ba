"""`tuneplan stop RUN`: the run checkpoints at the end of its current step and stops."""

from __future__ import annotations

import argparse

from tuneplan.commands.arguments import finite_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or folder (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--wait", action="store_true", help="wait until the run has stopped")
    parser.add_argument("--timeout", type=finite_number("--timeout", 0, 7 * 86400), default=600,
                        help="seconds --wait waits (default 600)")


def run(args: argparse.Namespace) -> int:
    from tuneplan.events import FINAL_PHASES
    from tuneplan.services import launcher, paths, runs

    run_dir = runs.find_run(args.run, paths.runs_root(args.runs_dir))
    runs.request_stop(run_dir)
    from tuneplan.services.command_line import resume_command

    print(f"stopping {run_dir.name}: it saves a checkpoint at the end of the current step; "
          f"continue later with `{resume_command(run_dir.name, args.runs_dir)}`")
    if args.wait:
        status = launcher.wait_for_phase(run_dir, FINAL_PHASES, args.timeout)
        phase = status.phase if status else "unknown"
        print(f"{run_dir.name}: {phase} at step {status.step if status else '?'}")
        return 0 if phase == "stopped" else 3
    return 0
