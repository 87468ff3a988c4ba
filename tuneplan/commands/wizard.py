"""`tuneplan wizard`: not built yet (see the project's issues)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("tuneplan wizard: not built yet", file=sys.stderr)
    return 3
