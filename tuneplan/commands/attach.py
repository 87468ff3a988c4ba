"""`tuneplan attach [RUN]`: open the live dashboard of a run (default: the newest)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="run name or run directory (default: the newest run)")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the user data folder)")


def resolve_run_dir(run: str | None, runs_dir: str | None) -> Path:
    """The run directory `run` names (a path, or a name under the runs root; None: the newest)."""
    from tuneplan.app import find_run

    return find_run(run, Path(runs_dir) if runs_dir else None)


def run(args: argparse.Namespace) -> int:
    run_dir = resolve_run_dir(args.run, args.runs_dir)
    from tuneplan.commands.terminal import require_terminal
    from tuneplan.errors import UserError
    from tuneplan.events import StatusUnreadable, load_status

    try:
        load_status(run_dir)
    except StatusUnreadable as exc:
        raise UserError(f"run {run_dir.name} is unreadable: {exc}; see `tuneplan runs`, "
                        f"fix or remove {run_dir}") from None
    require_terminal("the dashboard")
    from tuneplan.ui.app import create_app
    from tuneplan.ui.services import default_services

    app = create_app(default_services(Path(args.runs_dir) if args.runs_dir else None), run_dir=run_dir)
    result = app.run()
    print_detached(result)
    return app.return_code or 0


def print_detached(result: object) -> None:
    if isinstance(result, tuple) and result and result[0] == "detached":
        from tuneplan.events import FINAL_PHASES, effective_phase, read_status

        run_dir = Path(result[1])
        name = run_dir.name
        phase = effective_phase(read_status(run_dir))
        state = f"it has {phase}" if phase == "crashed" else (
            f"it ended ({phase})" if phase in FINAL_PHASES else "it keeps running")
        print(f"Detached from {name}; {state}. Reattach: tuneplan attach {name}", file=sys.stderr)
