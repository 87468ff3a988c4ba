"""`tuneplan serve`: the same app in a browser tab, through `textual-serve`."""

from __future__ import annotations

import argparse
import shlex
import sys

from tuneplan.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="localhost", help="interface to listen on (default: localhost)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--attach", metavar="RUN", nargs="?", const="", default=None,
                        help="serve the dashboard of RUN (default: the newest) instead of the wizard")


def run(args: argparse.Namespace) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        raise UserError("tuneplan serve needs textual-serve: pip install textual-serve") from None
    command = [sys.executable, "-m", "tuneplan"]
    if args.attach is not None:
        command += ["attach"] + ([args.attach] if args.attach else [])
    print(f"Serving `{' '.join(command[2:]) or 'tuneplan'}` on http://{args.host}:{args.port} "
          "(Ctrl+C stops; anyone who can reach this port can use the app)", file=sys.stderr)
    Server(shlex.join(command), host=args.host, port=args.port, title="tuneplan").serve()
    return 0
