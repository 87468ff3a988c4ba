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


# -- the plan inputs `tuneplan plan`, `train` and `probe` read alike (one-line UserErrors) -------
def count(value: str | None, flag: str) -> int | None:
    """A whole number > 0 (`1_000` allowed), or None when not given (one-line UserError naming `flag`)."""
    from tuneplan.knobs import parse_count

    return None if value is None else parse_count(value, flag)


def gpu_index(value: str | None) -> int | None:
    """`--gpu-index`: an NVML index (0 is the first GPU), or None when not given; whether NVML
    has that GPU is `tuneplan.app.resolve_hardware`'s to say (it lists the ones it sees)."""
    from tuneplan.errors import UserError

    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--gpu-index must be a whole number (got {value!r})") from None


def number(value: str | None, flag: str, *, allow_zero: bool = False) -> float | None:
    """A number > 0 (>= 0 with `allow_zero`), or None when not given (one-line UserError naming `flag`)."""
    from tuneplan.errors import UserError

    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        raise UserError(f"{flag} must be a number (got {value!r})") from None
    if x < 0 or (x == 0 and not allow_zero) or x != x:
        raise UserError(f"{flag} must be {'>=' if allow_zero else '>'} 0 (got {value})")
    return x


def safety_margin(value: str | None) -> float:
    """`--safety-margin`: the fraction of usable memory kept free (default: the planner's)."""
    from planner.solver import DEFAULT_SAFETY_MARGIN

    margin = number(value, "--safety-margin", allow_zero=True)
    return DEFAULT_SAFETY_MARGIN if margin is None else margin


def target(args: argparse.Namespace):
    """`--gpu`, `--vram` and `--gpu-index` -> `tuneplan.app.Target` (`--gpu-index` picks an NVML
    GPU, so it does not go with a named card or size)."""
    from tuneplan.app import Target, parse_size
    from tuneplan.errors import UserError

    index = gpu_index(getattr(args, "gpu_index", None))
    if index is not None and (args.gpu or args.vram):
        raise UserError("--gpu-index picks an NVML GPU: drop --gpu/--vram, or drop --gpu-index")
    if args.gpu is not None and not args.gpu.strip():
        raise UserError("--gpu is empty: name a card such as rtx-4090 or a100-80gb")
    return Target(gpu=args.gpu, vram_bytes=parse_size(args.vram) if args.vram is not None else None, index=index)
