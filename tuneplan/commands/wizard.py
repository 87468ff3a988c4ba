"""`tuneplan` with no subcommand: the wizard from GPU to launch, then the live dashboard.

Runs go under the runs root (`$TUNEPLAN_RUNS_DIR`, else the user data folder). Without an
NVIDIA GPU the first step offers dry-run planning (a catalog card or a memory size); with
one, Ctrl+D plans for another card.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: `tuneplan` alone opens the wizard (the CLI has no `wizard` subcommand)."""


def run(args: argparse.Namespace) -> int:
    from tuneplan.commands.terminal import require_terminal

    require_terminal("the wizard")
    from tuneplan.commands.attach import print_detached
    from tuneplan.ui.app import create_app

    app = create_app()
    result = app.run()
    print_detached(result)
    return app.return_code or 0
