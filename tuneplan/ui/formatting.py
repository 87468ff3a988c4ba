"""Number formatting for the screens (bytes inside, GiB only here)."""

from __future__ import annotations

from typing import Sequence

from planner.gpus import format_gib as gib  # noqa: F401 (one GiB format for every layer)


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


def last_lines(lines: Sequence[str], width: int | None, height: int, indent: str = "  ") -> list[str]:
    """The screen lines that show the newest of `lines` in a box `width` columns wide and
    `height` high: each line wrapped at spaces (continuations indented by `indent`), never cut
    inside a word, the newest whole at the bottom; older lines that do not fit are left out.
    `width` None or too narrow to wrap: the lines as they are."""
    import textwrap

    if height <= 0:
        return []
    if width is None or width <= len(indent) + 8:
        return list(lines)[-height:]
    out: list[str] = []
    room = width - len(indent)
    for line in reversed(list(lines)):
        line = " ".join(short_word(w, room) for w in line.split(" "))
        wrapped = textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                                break_on_hyphens=False) or [""]
        if len(out) + len(wrapped) > height:
            return out or wrapped[:height]  # the newest alone is taller than the box: its start
        out = wrapped + out
    return out


def short_word(word: str, room: int) -> str:
    """`word` as it fits `room` columns: unchanged when it fits; a path keeps its last whole
    components after `…/` (`…/tiny-model/tiny-llama`); anything else is cut with `…`."""
    if len(word) <= room:
        return word
    if "/" in word:
        parts = word.split("/")
        kept = parts[-1]
        for part in reversed(parts[:-1]):
            if len(part) + 1 + len(kept) + 2 > room:
                break
            kept = f"{part}/{kept}"
        if len(kept) + 2 <= room:
            return f"…/{kept}"
    return word[:max(room - 1, 1)] + "…"
