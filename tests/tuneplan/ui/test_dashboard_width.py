"""The dashboard at 80x24 (issue 19, item 11): its header, GPU, memory, tail and checkpoint
lines wrap at spaces; nothing is cut inside a word or ellipsised."""

from __future__ import annotations

import json
import shutil

import pytest
from textual.geometry import Region
from textual.widgets import Static

from tuneplan.ui.app import create_app
from tuneplan.ui.formatting import last_lines
from tuneplan.ui.screens.dashboard_screen import DashboardScreen

from ui_helpers import make_services, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")

LONG_PATH = "/root/.cache/tuneplan/tiny-model-75122cdd96fc/tiny-llama"
LONG_WARNING = ("no checkpoint before the end: training.save_steps (100) >= the run's 3 steps, so a crash or a "
                "preempted machine loses the whole run; lower --save-steps or add --save-every 30m")


def _on_screen(widget) -> list[str]:
    """The text rows `widget` shows (its content area, as the terminal draws it)."""
    size = widget.outer_size
    rows = [strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, size.width, size.height))]
    return [r for r in rows if r.strip("─ ")]  # the border line above the tail is drawing, not text


async def test_no_line_is_cut_inside_a_word_at_80_columns(tmp_path, recorded_run):
    run_dir = recorded_run("tiny-done")
    renamed = run_dir.with_name("a-rather-long-run-name-of-a-tiny-llama-full-fine-tune-20261206")
    shutil.move(run_dir, renamed)
    run_dir = renamed
    with (run_dir / "events.jsonl").open("a") as f:  # a long message and a checkpoint with a long path
        f.write(json.dumps({"kind": "message", "level": "info", "text": f"loaded {LONG_PATH} (full)", "t": 1e9}) + "\n")
        f.write(json.dumps({"kind": "message", "level": "warning", "text": LONG_WARNING, "t": 1e9}) + "\n")
    app = create_app(make_services(tmp_path), run_dir=run_dir)  # no NVML: the long "not available" line
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await wait_for(pilot, lambda: screen.snapshot is not None and screen.gpu_sample is not None)
        await pilot.pause()
        screen._render_snapshot()  # once more, now that every widget has its size
        await pilot.pause()
        s = screen.snapshot
        sources = {
            "#title": str(screen.query_one("#title", Static).render()),
            "#stats": str(screen.query_one("#stats", Static).render()),
            "#tail": "\n".join(s.event_lines) + " events (l: train.log)",
            "#checkpoints": str(screen.query_one("#checkpoints", Static).render()),
        }
        for selector, source in sources.items():
            words = set(source.split())
            rows = _on_screen(screen.query_one(selector, Static))
            assert rows, selector
            for row in rows:
                for w in row.split():
                    # whole words only; a path wider than the tail keeps its last whole components
                    short_path = w.startswith("…/") and any(x.endswith(w[1:]) for x in words)
                    assert (w in words and "…" not in w) or short_path, (selector, row, words)
        # what used to be cut is whole on the screen: the run name, the GPU line, the newest event
        title = " ".join(" ".join(_on_screen(screen.query_one("#title", Static))).split())
        assert run_dir.name in title and "batch" in title
        stats = " ".join(" ".join(_on_screen(screen.query_one("#stats", Static))).split())
        assert "no NVIDIA driver or GPU" in stats and "after step 2" in stats
        tail = " ".join(" ".join(_on_screen(screen.query_one("#tail", Static))).split())
        assert LONG_WARNING in tail  # the newest event, whole, over four rows


def test_last_lines_keeps_the_newest_whole_and_wraps_at_spaces():
    lines = ["old line one", "a much longer newest line that needs two rows"]
    out = last_lines(lines, 24, 3)
    assert out == ["old line one", "a much longer newest", "  line that needs two", "  rows"][-3:] or \
        out[-1].strip().endswith("rows")
    assert all(len(x) <= 24 for x in out) and " ".join(" ".join(out).split()).endswith(lines[-1])
    assert last_lines(lines, None, 1) == [lines[-1]]


def test_a_word_wider_than_the_box_is_abbreviated_whole_components_first():
    from tuneplan.ui.formatting import short_word

    assert short_word(LONG_PATH, 40) == "…/tiny-model-75122cdd96fc/tiny-llama"
    assert short_word(LONG_PATH, 15) == "…/tiny-llama"
    assert short_word("short", 10) == "short"
    assert last_lines([f"phase: loading (model {LONG_PATH} (full))"], 52, 6) == [
        "phase: loading (model", "  …/tuneplan/tiny-model-75122cdd96fc/tiny-llama", "  (full))"]
