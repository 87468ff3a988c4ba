"""`tuneplan plan` and `presets list` in a real 80x24 terminal (tmux): no line longer than the
terminal, and no word broken to make it fit. Piped, the same commands print plain lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tmux_session import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

COMMANDS = {
    "fits": ["plan", "--model", "llama-3.1-8b", "--gpu", "rtx-4090"],
    "does not fit": ["plan", "--model", "llama-3.1-70b", "--gpu", "rtx-3060-12gb"],
    "presets": ["presets", "list"],
    "preset re-fit": ["plan", "--preset", "llama-3.1-8b-lora-24gb", "--gpu", "rtx-3060-12gb"],
}


def _plain(argv: list[str], cwd) -> str:
    """The command's output through a pipe (not wrapped)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "tuneplan", *argv], capture_output=True, text=True, cwd=cwd,
                         env=env)
    return out.stdout + out.stderr


@pytest.fixture
def term(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.close()


@pytest.mark.parametrize("case", list(COMMANDS))
def test_output_fits_80_columns_without_breaking_words(term, case):
    argv = COMMANDS[case]
    term.type(" ".join([sys.executable, "-m", "tuneplan", *argv]) + "; echo END-$?")
    term.send("Enter")
    term.wait(r"END-\d")
    lines = term.history()
    end = max(i for i, line in enumerate(lines) if re.match(r"END-\d", line))
    start = max(i for i, line in enumerate(lines[:end]) if "-m tuneplan" in line and "echo END-" in line)
    body = [line.rstrip() for line in lines[start + 1:end]]
    assert len(body) > 10, body
    # lines wrap at spaces: only a single word wider than the terminal (a long path) may overflow
    too_long = [line for line in body if len(line) > 80 and len(line.split()) > 1]
    assert not too_long, too_long
    # every word on the screen is a whole word of the plain output: nothing was cut in two
    plain_words = {w.strip("(),") for w in _plain(argv, term.cwd).split()}
    plain_words |= {"made", "for"}  # the narrow presets list says "made for" where the table has a column
    plain_words |= {"\\"}  # the plan's train command continues its lines with ` \` in a terminal
    bar = re.compile(r"^\[?[█▌▶]+\]?$")  # memory bars scale with the width
    broken = [w for line in body for w in line.split() if w.strip("(),") not in plain_words and not bar.match(w)]
    assert not broken, broken
    if case in ("fits", "does not fit"):
        first_screen = "\n".join(body[:12])  # the essentials come first
        assert re.search(r"FITS|DOES NOT FIT", first_screen)
        assert "Memory" in first_screen and "GiB usable" in first_screen and "Why" in first_screen
