"""A real terminal for end-to-end tests: a private tmux server with one 80x24 session.

Drive it with `send` (keys) and `type` (literal text), read it with `screen`, and `wait` on
what the screen shows (never a fixed sleep). The shell runs in `tmp` with this tree on
PYTHONPATH, the runs root under `tmp`, and the Hub offline.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SESSIONS = itertools.count()


class Tmux:
    def __init__(self, tmp: Path):
        self.cwd = tmp
        self.socket = f"tuneplan-e2e-{os.getpid()}-{next(_SESSIONS)}"  # one server per session
        self.env = {**os.environ, "TUNEPLAN_RUNS_DIR": str(tmp / "runs"), "OMP_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
        self.tmux("new-session", "-d", "-s", "e2e", "-x", "80", "-y", "24", "bash --norc --noprofile")
        self.send(f"cd {tmp} && export PS1='$ '", "Enter")

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, env=self.env)
        return out.stdout

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "e2e", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "e2e", "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "e2e")

    def wait(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {pattern!r}; the screen:\n{text}")
            time.sleep(0.1)

    def close(self) -> None:
        self.tmux("kill-server")

    def history(self) -> list[str]:
        """Every line the pane has shown, scrollback included; a line the terminal wrapped
        comes back joined, as the program wrote it (`capture-pane -J`)."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "e2e").splitlines()
