"""The plan step's keys as a person uses them (issue 19, item 11): Ctrl+U clears a field and
never undoes edits, undo is Ctrl+Z and asks first, Up/Down move between knob rows, and the LoRA
rows stay in place, disabled, under full fine-tuning."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input

from tuneplan.knobs import LORA, SCREEN_KNOBS
from tuneplan.ui.app import create_app
from tuneplan.ui.screens.plan_screen import NOT_USED, PlanScreen
from tuneplan.ui.widgets.choice import Choice
from tuneplan.ui.widgets.dialogs import ConfirmDialog

from ui_helpers import make_services, open_plan_screen, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_ctrl_u_clears_a_field_and_never_undoes_edits(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot)
        screen.query_one("#method", Choice).focus()
        await pilot.press("left")  # an edit: qlora -> lora
        edited = screen.plan
        assert edited.setup.method == "lora" and not edited.solver
        await pilot.press("ctrl+u")  # on a choice row: nothing to clear, and nothing undone
        await pilot.pause()
        assert screen.plan is edited and isinstance(app.screen, PlanScreen)
        seq = screen.query_one("#seq_len", Input)
        seq.focus()
        await pilot.press("ctrl+u")  # in a number field: the field is cleared, as in every field
        await pilot.pause()
        assert seq.value == "" and screen.plan.setup.method == "lora"


async def test_undo_is_ctrl_z_and_asks_first(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot)
        solved = screen.plan
        await pilot.press("ctrl+z")  # nothing edited yet: nothing to ask
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen)
        screen.query_one("#method", Choice).focus()
        await pilot.press("left")
        await pilot.press("ctrl+z")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "method" in str(app.screen.query_one("#question").render())
        await pilot.press("n")  # kept
        await wait_for(pilot, lambda: app.screen is screen)
        assert screen.plan.setup.method == "lora"
        assert screen.focused is screen.query_one("#method", Choice)  # back where the user was
        await pilot.press("ctrl+z")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen is screen)
        assert screen.plan is solved and screen.query_one("#method", Choice).value == solved.setup.method


async def test_up_and_down_move_between_knob_rows(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot)
        rows = [k.name for k in SCREEN_KNOBS]
        screen.query_one(f"#{rows[0]}").focus()
        for name in rows[1:]:
            await pilot.press("down")
            assert screen.focused.id == name
        await pilot.press("down")  # past the last knob: the alternatives
        assert isinstance(screen.focused, DataTable)
        screen.query_one(f"#{rows[-1]}").focus()
        for name in reversed(rows[:-1]):
            await pilot.press("up")
            assert screen.focused.id == name
        await pilot.press("up")  # the first row stays
        assert screen.focused.id == rows[0]
        assert screen.plan.solver  # moving edits nothing


async def test_lora_rows_stay_in_place_disabled_under_full_fine_tuning(tmp_path):
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_plan_screen(app, pilot, model="qwen2.5-0.5b", card="h100")
        lora_rows = [screen.query_one(f"#{k.name}") for k in SCREEN_KNOBS if k.group == LORA]
        assert lora_rows and all(not w.disabled for w in lora_rows)
        where = {w.id: w.region.y for w in lora_rows}
        method = screen.query_one("#method", Choice)
        method.focus()
        while method.value != "full":
            await pilot.press("right")
        await pilot.pause()
        assert screen.plan.setup.method == "full"
        for w in lora_rows:
            assert w.disabled and w.display and w.region.y == where[w.id]  # shown where it was
            shown = w.placeholder if isinstance(w, Input) else str(w.render())
            assert shown == NOT_USED
        # the focus skips them
        screen.query_one("#grad_accum", Input).focus()
        await pilot.press("down")
        assert screen.focused.id not in {w.id for w in lora_rows}
        while method.value != "lora":  # back to LoRA: the rows come back with their values
            method.focus()
            await pilot.press("right")
        await pilot.pause()
        rank = screen.query_one("#lora_rank", Input)
        assert not rank.disabled and rank.value == str(screen.plan.setup.lora_rank)


async def test_typing_max_in_the_sequence_length_searches_the_longest_that_fits(tmp_path):
    """`max` in the sequence-length field is `--seq-len max`: the solver searches the longest that
    fits the card with the other edited knobs held, the field then shows the length it found, and
    the reasons say so; anything but digits or `max` cannot be typed there."""
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_plan_screen(app, pilot, model="llama-3.1-70b", card="a6000")
        assert screen.plan.setup.seq_len == 2048
        seq = screen.query_one("#seq_len", Input)
        seq.focus()
        await pilot.press("ctrl+u", "x", "m", "a", "x")  # "x" is refused: the field holds "max"
        await wait_for(pilot, lambda: screen.plan.setup.seq_len > 2048, timeout=30)
        s = screen.plan.setup
        assert screen.plan.fits and s.seq_len >= 12_106  # Unsloth's published 48 GB maximum
        assert s.offload_activations and s.tiled_mlp and s.offload_embedding
        assert seq.value == str(s.seq_len)
        assert any(r.startswith(f"Sequence length {s.seq_len}: the longest that fits") for r in screen.plan.reasons)
        assert screen.fixed["seq_len"] == "max"
