"""`tuneplan` with no subcommand: the wizard from GPU to launch, then the live dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="plan for a card you don't have")
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the user data folder)")


def run(args: argparse.Namespace) -> int:
    from tuneplan.commands.attach import print_detached
    from tuneplan.ui.app import create_app
    from tuneplan.ui.services import default_services

    runs_dir = getattr(args, "runs_dir", None)
    app = create_app(default_services(Path(runs_dir) if runs_dir else None),
                     dry_run=getattr(args, "dry_run", False))
    result = app.run()
    print_detached(result)
    return app.return_code or 0
