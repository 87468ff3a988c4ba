"""Number formatting for the screens: the core `tuneplan.formatting` (numbers, shared with the
commands), under the name the screens import it by, and the screens' own line fitting."""

from __future__ import annotations

from typing import Sequence

from tuneplan.formatting import count, duration, gib, money, rate

__all__ = ["count", "duration", "gib", "money", "rate", "last_lines", "short_word"]


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
