"""Step 4: the solver's plan, knobs edited in place, over-budget shown in red."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input

from tuneplan.ui.app import create_app
from tuneplan.ui.messages import PlanAccepted
from tuneplan.ui.screens.review_screen import ReviewScreen
from tuneplan.ui.widgets.choice import Choice

from ui_helpers import make_services, open_plan_screen, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


def _text(screen, sel):
    w = screen.query_one(sel)
    return str(w.render())


async def test_8b_on_a_12gb_card_is_a_qlora_plan_that_fits(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot)
        plan = screen.plan
        assert plan.fits and plan.setup.method == "qlora"
        assert "FITS" in _text(screen, "#title") and "RTX 3060" in _text(screen, "#title")
        bar = _text(screen, "#memory")
        assert "of 11.0 GiB" in bar or "of 12.0 GiB" in bar
        assert "headroom" in bar and "4-bit W" in bar and "activations" in bar
        assert any("QLoRA" in r for r in plan.reasons)
        assert "QLoRA" in _text(screen, "#reasons")
        assert screen.query_one("#method", Choice).value == "qlora"
        assert screen.query_one("#seq_len", Input).value == str(plan.setup.seq_len)
        assert "tok/s" in _text(screen, "#summary")


async def test_editing_a_knob_re_estimates_and_goes_red(tmp_path):
    app = create_app(make_services(tmp_path))
    accepted: list[PlanAccepted] = []
    hook = lambda m: accepted.append(m) if isinstance(m, PlanAccepted) and not any(m is s for s in accepted) else None
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        screen = await open_plan_screen(app, pilot)
        solved = screen.plan
        seq = screen.query_one("#seq_len", Input)
        seq.focus()
        seq.value = ""
        await pilot.press(*"32768")  # every keypress re-estimates
        await pilot.pause()
        assert screen.plan.setup.seq_len == 32768 and not screen.plan.solver
        assert not screen.plan.fits
        title = _text(screen, "#title")
        assert "DOES NOT FIT" in title and "over by" in title
        assert "OVER by" in _text(screen, "#memory") or "safety margin" in _text(screen, "#memory")
        # the method cycles with the keyboard and re-estimates too
        screen.query_one("#method", Choice).focus()
        await pilot.press("left")  # qlora -> lora
        assert screen.plan.setup.method == "lora"
        await pilot.press("ctrl+z", "y")  # back to the solver's plan, confirmed
        await pilot.pause()
        assert screen.plan is solved and seq.value == str(solved.setup.seq_len)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
    assert accepted[0].plan is solved


async def test_alternatives_table_and_replan_keeps_edits(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot, model="qwen2.5-0.5b", card="h100")
        assert screen.plan.setup.method == "lora" and not screen.plan.setup.grad_checkpointing
        table = screen.query_one("#alternatives", DataTable)
        assert table.row_count == len(screen.plan.alternatives) > 0
        alt = screen.plan.alternatives[0]
        table.focus()
        await pilot.press("enter")  # use the highlighted alternative
        assert screen.plan.setup == alt.setup and not screen.plan.solver
        await pilot.press("ctrl+z", "y")
        await pilot.pause()
        rank = screen.query_one("#lora_rank", Input)
        rank.focus()
        rank.value = "64"
        await pilot.pause()
        assert screen.plan.setup.lora_rank == 64
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.plan.solver)
        assert screen.plan.setup.lora_rank == 64


def test_lora_targets_stay_the_group_the_planner_resolves():
    """Choosing `attention` keeps the group (phi-3 adapts its fused qkv_proj), and the row shows
    a group or a stored q/k/v/o tuple as `attention`, never the letters of a string."""
    from planner.setup import ALL_LINEAR, ATTENTION_TARGETS
    from tuneplan.ui.screens.plan_screen import targets_value

    assert targets_value("attention") == "attention" and targets_value(ALL_LINEAR) == ALL_LINEAR
    assert targets_value(ATTENTION_TARGETS) == "attention" and targets_value(("q_proj", "v_proj")) == "q_proj,v_proj"


def _rows(screen):
    """The knob grid as (label, widget) pairs, top to bottom."""
    cells = list(screen.query_one("#knobs").children)
    return [(str(label.render()), widget) for label, widget in zip(cells[::2], cells[1::2])]


async def test_the_knob_rows_are_the_registrys_screen_knobs(tmp_path):
    """Every registry knob with a screen label has a row, in the registry's row order, with its
    label; a count is typed, any other knob offers exactly the registry's options and shows the
    solver's value among them."""
    from tuneplan.knobs import COUNT, KNOBS, SCREEN_KNOBS
    from tuneplan.ui.screens.plan_screen import shown_value

    on_screen = [k for k in KNOBS if k.screen]
    assert {k.name for k in SCREEN_KNOBS} == {k.name for k in on_screen} and len(on_screen) > 1
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot)
        rows = _rows(screen)
        assert [(label, w.id) for label, w in rows] == [(k.screen, k.name) for k in SCREEN_KNOBS]
        for knob, (_, widget) in zip(SCREEN_KNOBS, rows):
            if knob.kind == COUNT:
                assert isinstance(widget, Input) and widget.value == str(getattr(screen.plan.setup, knob.name))
            else:
                assert isinstance(widget, Choice) and widget.options == list(knob.screen_options())
                assert widget.value == shown_value(knob, getattr(screen.plan.setup, knob.name))


async def test_the_row_order_and_options_follow_the_registry(tmp_path, monkeypatch):
    """Reorder the registry's rows and give a choice knob other options: the screen follows."""
    from dataclasses import replace

    from tuneplan.knobs import SCREEN_KNOBS
    from tuneplan.ui.screens import plan_screen

    two = (("paged 8-bit", "paged-adamw-8bit"), ("32-bit", "adamw"))
    knobs = tuple(replace(k, screen_choices=two) if k.name == "optimizer" else k for k in reversed(SCREEN_KNOBS))
    monkeypatch.setattr(plan_screen, "SCREEN_KNOBS", knobs)
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot)
        rows = _rows(screen)
        assert [w.id for _, w in rows] == [k.name for k in knobs]
        optimizer = screen.query_one("#optimizer", Choice)
        assert optimizer.options == list(two)
        optimizer.focus()
        await pilot.press("right")
        assert screen.plan.setup.optimizer in {v for _, v in two}
