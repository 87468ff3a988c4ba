"""End to end in a real terminal: the whole wizard in tmux at 80x24 with the tiny model and
the sample dataset on the CPU, a real detached training run, detach, `tuneplan attach`.

Drives the real app with `tmux send-keys` and reads it with `tmux capture-pane`; every wait
is on what the screen shows (or on the run's files), never a fixed sleep.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tmux_session import Tmux
from tuneplan import events as ev

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory) -> Path:
    """The tiny model (deterministic), cached across runs by the hash of what builds it."""
    from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG

    digest = hashlib.sha256()
    for f in (ROOT / "tuneplan/training/tiny.py", TINY_MODEL_CONFIG, SAMPLE_CHAT):
        digest.update(Path(f).read_bytes())
    try:
        root = Path(request.config.cache.mkdir("tuneplan-tiny-model"))
    except (AttributeError, OSError):  # no cache provider (-p no:cacheprovider) or read-only
        root = tmp_path_factory.mktemp("tuneplan-tiny-model")
    cache = root / f"tiny-{digest.hexdigest()[:12]}"
    if not (cache / "config.json").is_file() or not (cache / "tokenizer.json").is_file():
        from tuneplan.training.tiny import build_tiny_model

        tmp = tmp_path_factory.mktemp("tiny-build")
        build_tiny_model(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(tmp, cache)
    return cache


def _loss_on_screen(text: str) -> float | None:
    m = re.search(r"loss (\d+\.\d+)", text)
    return float(m.group(1)) if m else None


def test_wizard_launch_follow_detach_attach(tmp_path, tiny_model_dir):
    term = Tmux(tmp_path)
    app = f"{sys.executable} -m tuneplan"
    try:
        term.type(app)
        term.send("Enter")
        # 1 hardware: no NVIDIA GPU here -> dry run by memory size
        term.wait(r"No NVIDIA GPU")
        term.type("4GiB")
        term.send("Enter")
        # 2 model: the tiny model's folder
        term.wait(r"\[2 Model\]")
        term.type(str(tiny_model_dir))
        term.send("Enter")
        term.wait(r"architecture llama")
        term.send("Enter")
        # 3 dataset: the bundled sample is offered; preview, then continue
        term.wait(r"\[3 Dataset\]")
        term.send("Enter")
        screen = term.wait(r"examples 400")
        assert "tokens exact" in screen  # counted with the tiny model's own tokenizer.json
        term.send("Enter")
        # 4 plan: fits; keep each step small on a shared CPU: micro-batch 2, accumulation 1
        screen = term.wait(r"FITS")
        assert "full" in screen  # the tiny model's weights are random: it trains in full
        term.wait(r"> method:")  # the focused knob explains itself
        term.send("Tab", "Tab")  # method -> sequence length -> micro-batch
        term.wait(r"> micro-batch:")
        term.type("2")  # a focused field's text is selected: typing replaces it
        term.wait(r"grad accum\s+8\s")  # the accumulation follows: the effective batch stays 16
        term.send("Tab")
        term.wait(r"> grad accum:")
        term.type("1")
        term.wait(r"batch 2 x \d+ = ")
        term.send("C-n")
        # 5 review: 12 steps at a learning rate that shows the loss falling, then launch
        term.wait(r"> max steps:")
        term.type("12")
        term.wait(r"--max-steps\s+12\s")  # the command wraps at 80 columns
        term.send("Tab")
        term.wait(r"> learning rate:")
        term.type("0.01")
        screen = term.wait(r"--max-steps\s+12\s+--lr\s+0\.01\b")
        assert re.search(r"--batch\s+2\s+--grad-accum\s+1\s", screen)
        term.send("C-l")
        # the dashboard follows the detached run (on a fast, idle CPU it may already be done)
        screen = term.wait(r"step ([1-9]|1[0-2])/12 .*\n(.*\n)*.*loss \d", timeout=75)
        first_step = int(re.search(r"step (\d+)/12", screen).group(1))
        first_loss = _loss_on_screen(screen)
        assert first_loss is not None
        term.send("d")
        screen = term.wait(r"Detached from [^\s;]+;")
        run_name = re.search(r"Detached from ([^\s;]+);", screen).group(1)
        run_dir = tmp_path / "runs" / run_name
        assert (run_dir / ev.EVENTS_FILE).is_file()
        # the run goes on without the dashboard; reattach from "another login"
        term.send("clear", "Enter")
        term.type(f"{app} attach")
        term.send("Enter")
        screen = term.wait(r"\[done\]", timeout=90)
        assert run_name in screen and "step 12/12" in screen
        last_loss = _loss_on_screen(screen)
        assert last_loss is not None
        # The replayed loss plot spans the whole run: its top label is the early loss, well
        # above the final one (step-to-step noise is small next to the fall).
        top = max(float(m) for m in re.findall(r"^\s*(\d+\.\d+)┤", screen, re.M))
        assert top - last_loss > 0.1, (top, last_loss, first_step, first_loss)
        term.send("q")
        term.wait(r"Detached from")
    finally:
        term.close()
    losses = [e.loss for e in ev.read_events(run_dir) if e.kind == "log" and e.loss is not None]
    assert losses[-1] < losses[0]
    assert json.loads((run_dir / ev.STATUS_FILE).read_text())["phase"] == "done"
