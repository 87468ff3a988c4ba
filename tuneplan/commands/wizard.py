"""`tuneplan` with no subcommand: the wizard from GPU to launch, then the live dashboard.

Runs go under the runs root (`$TUNEPLAN_RUNS_DIR`, else the user data folder). Without an
NVIDIA GPU the first step offers dry-run planning (a catalog card or a memory size); with
one, Ctrl+D plans for another card.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: `tuneplan` alone opens the wizard (the CLI has no `wizard` subcommand)."""


def require_terminal(what: str) -> None:
    """A one-line refusal when stdin or stdout is not a terminal (a pipe, a file, cron): a
    full-screen app would write escape codes into the file and wait for keys that never come.
    textual-serve runs the app without a terminal on purpose and says so in TEXTUAL_DRIVER."""
    import os
    import sys

    from tuneplan.errors import UserError

    if os.environ.get("TEXTUAL_DRIVER"):
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError(f"{what} needs a terminal (stdin and stdout are not one here); use `tuneplan plan` and "
                        "`tuneplan train` in scripts, or `tuneplan serve` for a browser tab")


def run(args: argparse.Namespace) -> int:
    require_terminal("the wizard")
    from tuneplan.commands.attach import print_detached
    from tuneplan.ui.app import create_app

    app = create_app()
    result = app.run()
    print_detached(result)
    return app.return_code or 0
