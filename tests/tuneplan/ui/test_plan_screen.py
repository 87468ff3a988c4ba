"""Step 4: the solver's plan, knobs edited in place, over-budget shown in red."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input

from tuneplan.ui.adapters import ModelsAdapter
from tuneplan.ui.app import create_app
from tuneplan.ui.messages import PlanAccepted
from tuneplan.ui.screens.plan_screen import PlanScreen
from tuneplan.ui.screens.review_screen import ReviewScreen
from tuneplan.ui.target import dry_run_target
from tuneplan.ui.widgets.choice import Choice

from ui_helpers import make_services, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def _open(app, pilot, model="llama-3.1-8b", card="3060"):
    target = dry_run_target(card)
    m = ModelsAdapter().resolve(model)
    app.state.target, app.state.model = target, m
    await app.push_screen(PlanScreen(target, m, None))
    screen = app.screen
    await wait_for(pilot, lambda: screen.plan is not None)
    return screen


def _text(screen, sel):
    w = screen.query_one(sel)
    return str(w.render())


async def test_8b_on_a_12gb_card_is_a_qlora_plan_that_fits(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot)
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
        screen = await _open(app, pilot)
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
        await pilot.press("ctrl+u")  # back to the solver's plan
        assert screen.plan is solved and seq.value == str(solved.setup.seq_len)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
    assert accepted[0].plan is solved


async def test_alternatives_table_and_replan_keeps_edits(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(app, pilot, model="qwen2.5-0.5b", card="h100")
        assert screen.plan.setup.method == "lora" and not screen.plan.setup.grad_checkpointing
        table = screen.query_one("#alternatives", DataTable)
        assert table.row_count == len(screen.plan.alternatives) > 0
        alt = screen.plan.alternatives[0]
        table.focus()
        await pilot.press("enter")  # use the highlighted alternative
        assert screen.plan.setup == alt.setup and not screen.plan.solver
        await pilot.press("ctrl+u")
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
