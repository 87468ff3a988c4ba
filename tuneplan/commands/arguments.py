"""argparse types for the numbers of the commands that take them directly (not through a run
configuration or a plan request, which validate their own): finite and in range, or one line
from argparse (`tuneplan X: error: argument --flag: ...`, exit 2). Standard library only."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def whole_number(flag: str, lo: int, hi: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number (got {text[:40]!r})") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be a whole number in [{lo}, {hi}] (got {text[:40]})")
        return n

    parse.__name__ = flag  # argparse names the type in some messages
    return parse


def finite_number(flag: str, lo: float, hi: float) -> Callable[[str], float]:
    """An argparse `type`: a finite number in [lo, hi]."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number (got {text[:40]!r})") from None
        if not math.isfinite(x) or not lo <= x <= hi:
            raise argparse.ArgumentTypeError(f"must be a finite number in [{lo:g}, {hi:g}] (got {text[:40]})")
        return x

    parse.__name__ = flag
    return parse
