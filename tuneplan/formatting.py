"""Number formatting shared by the screens and the commands (bytes inside, GiB only here).

Core layer: `tuneplan.ui` and `tuneplan.commands` both read it, so a number prints the same
in a table and on a screen."""

from __future__ import annotations

from planner.gpus import format_gib as gib  # noqa: F401 (one GiB format for every layer)

GiB = 1024**3


def size(n: float | None) -> str:
    """Bytes in GiB, with more digits below 1 GiB (the tiny CPU model is a few MiB); `-` when
    unknown. Measured-beside-predicted tables (probe, compare) use it."""
    if n is None:
        return "-"
    return gib(n, 2 if n >= GiB else 3)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def count(n: float | None) -> str:
    """12345678 -> 12.3M"""
    if n is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def rate(n: float | None, unit: str = "tok/s") -> str:
    return "-" if n is None else f"{count(n)} {unit}"


def money(n: float | None) -> str:
    return "-" if n is None else f"${n:,.2f}"
