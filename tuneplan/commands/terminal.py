"""Text output that fits the terminal: the width to wrap to, and wrapping without breaking words.

    width = output_width()           # COLUMNS, else the terminal's width; None when piped
    lines = wrap("a long sentence ...", width, "  - ", "    ")

Piped output (no terminal, no COLUMNS) is plain: not wrapped, so scripts and `grep` see one
line per item. Words are never split: a word longer than the line (a URL, a path) gets a line
of its own.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from typing import TextIO

MIN_WIDTH = 40
"""Narrower terminals are treated as this wide (the tables need a little room)."""


def output_width(stream: TextIO | None = None) -> int | None:
    """Columns to wrap to, or None for plain output. `COLUMNS` wins (as in
    `shutil.get_terminal_size`); else the terminal's width when `stream` is a terminal."""
    stream = sys.stdout if stream is None else stream
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return max(MIN_WIDTH, int(cols))
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return None
    return max(MIN_WIDTH, shutil.get_terminal_size().columns)


def wrap(text: str, width: int | None, first: str = "", rest: str | None = None) -> list[str]:
    """`text` as lines of at most `width` characters, starting with `first` and continued
    with `rest` (default: spaces as wide as `first`). Breaks at spaces only."""
    rest = " " * len(first) if rest is None else rest
    if width is None:
        return [first + text]
    return textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def fill(text: str, width: int | None, first: str = "", rest: str | None = None) -> str:
    """`wrap`, joined with newlines."""
    return "\n".join(wrap(text, width, first, rest))


def require_terminal(what: str) -> None:
    """A one-line refusal when stdin or stdout is not a terminal (a pipe, a file, cron): a
    full-screen app would write escape codes into the file and wait for keys that never come.
    textual-serve runs the app without a terminal on purpose and says so in TEXTUAL_DRIVER."""
    from tuneplan.errors import UserError

    if os.environ.get("TEXTUAL_DRIVER"):
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError(f"{what} needs a terminal (stdin and stdout are not one here); use `tuneplan plan` and "
                        "`tuneplan train` in scripts, or `tuneplan serve` for a browser tab")
