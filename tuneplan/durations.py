"""Durations as people write them: `30m`, `1h`, `90s`, `1h30m`, `2d`, `1.5h`.

One parser for every option that takes a length of time (`--save-every`,
`training.save_every`); core, standard library only.
"""

from __future__ import annotations

import math
import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smhd])", re.I)
_WHOLE = re.compile(r"\s*(?:(?:\d+(?:\.\d+)?|\.\d+)\s*[smhd]\s*)+", re.I)


def parse_duration(text: str) -> float:
    """`"30m"` -> 1800.0 seconds. Units s, m, h, d (several may follow each other: `1h30m`).
    Raises ValueError with a one-line message (a unit is required; the total must be > 0
    and finite)."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(f"must be a duration such as 30m, 1h, 90s or 1h30m (got {text!r})")
    seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _PART.findall(text))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a duration > 0 (got {text!r})")
    return seconds


def format_duration(seconds: float) -> str:
    """1800 -> `30m`, 5400 -> `1h30m`, 45 -> `45s` (the inverse of `parse_duration` for
    whole seconds)."""
    s = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts) or "0s"
