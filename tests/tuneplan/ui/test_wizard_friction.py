"""The first run through the wizard: the bundled tiny model is offered and trains in full,
Enter moves on from the plan, and a micro-batch edit keeps the effective batch visible."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.style import Style
from textual.widgets import Input, OptionList, Static

from tuneplan.data import TINY_MODEL
from tuneplan.ui.app import create_app
from tuneplan.ui.messages import ModelChosen
from tuneplan.ui.screens.dataset_screen import DatasetScreen
from tuneplan.ui.screens.model_screen import ModelScreen
from tuneplan.ui.screens.review_screen import ReviewScreen
from tuneplan.ui.target import dry_run_target

from ui_helpers import make_services, open_plan_screen, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.mark.slow
async def test_model_screen_lists_and_accepts_the_bundled_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_CACHE_DIR", str(tmp_path / "cache"))
    app = create_app(make_services(tmp_path))
    seen: list[ModelChosen] = []
    hook = lambda m: seen.append(m) if isinstance(m, ModelChosen) and not any(m is s for s in seen) else None
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        app.state.target = dry_run_target("4GiB")
        await app.push_screen(ModelScreen())
        screen = app.screen
        hits = screen.query_one("#hits", OptionList)
        assert hits.get_option_at_index(0).id == TINY_MODEL  # offered first, with nothing typed
        await pilot.press(*TINY_MODEL, "enter")
        await wait_for(pilot, lambda: screen.model is not None, timeout=60)  # built once (seconds)
        details = str(screen.query_one("#details", Static).render())
        assert "0.00B" not in details and "139.6k" in details and "bundled" in details
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DatasetScreen))
    model = seen[0].model
    assert model.source == TINY_MODEL and (Path(model.tokenizer_source) / "tokenizer.json").is_file()


def _visible(strip, text: str) -> bool:
    """`text` is drawn in the strip with a foreground that differs from its background."""
    for seg in strip:
        if text in seg.text:
            style = seg.style or Style()
            fg, bg = style.color, style.bgcolor
            if style.reverse:
                fg, bg = bg, fg
            return fg != bg
    return False


async def test_tiny_model_trains_in_full_and_micro_batch_edit_keeps_the_effective_batch(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot, TINY_MODEL, "4GiB")
        s = screen.plan.setup
        assert s.method == "full" and any("random" in r for r in screen.plan.reasons)
        effective = s.effective_batch()
        mb = screen.query_one("#micro_batch", Input)
        mb.focus()
        await pilot.pause()
        assert _visible(mb.render_line(0), str(s.micro_batch))  # the focused value is drawn
        await pilot.press("2")  # a focused field's text is selected: typing replaces it
        await pilot.pause()
        assert screen.plan.setup.micro_batch == 2 and screen.plan.setup.effective_batch() == effective
        assert screen.query_one("#grad_accum", Input).value == str(effective // 2)
        assert _visible(mb.render_line(0), "2")
        await pilot.press("enter")  # Enter moves on
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))


async def test_enter_on_a_choice_knob_moves_on(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot, TINY_MODEL, "4GiB")
        screen.query_one("#method").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
