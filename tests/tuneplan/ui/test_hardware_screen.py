"""Step 1: detected GPUs (fake NVML) or a dry-run target."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Static

from tuneplan.ui.app import create_app
from tuneplan.ui.messages import TargetChosen
from tuneplan.ui.screens.hardware_screen import HardwareScreen
from tuneplan.ui.screens.model_screen import ModelScreen

from ui_helpers import FakeNVML, make_services, rtx_4090, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


def _hook(seen):
    # a bubbling message is seen once per node it visits: keep each once
    return lambda m: seen.append(m) if isinstance(m, TargetChosen) and not any(m is s for s in seen) else None


async def test_no_driver_offers_dry_run_by_card_name(tmp_path):
    app = create_app(make_services(tmp_path))
    seen: list[TargetChosen] = []
    async with app.run_test(size=(80, 24), message_hook=_hook(seen)) as pilot:
        screen = app.screen
        assert isinstance(screen, HardwareScreen)
        await wait_for(pilot, lambda: screen.query_one("#dry").display)
        status = str(screen.query_one("#status", Static).render())
        assert "No NVIDIA GPU" in status and "dry run" in status
        await pilot.press(*"3060", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen))
    (msg,) = seen
    assert msg.target.dry_run and msg.target.gpu.key == "rtx-3060-12gb"
    assert app.state.target is msg.target


async def test_dry_run_by_memory_size_and_bad_name(tmp_path):
    app = create_app(make_services(tmp_path))
    seen: list[TargetChosen] = []
    async with app.run_test(size=(80, 24), message_hook=_hook(seen)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.query_one("#dry").display)
        await pilot.press(*"zz9999", "enter")
        assert "unknown GPU" in str(screen.query_one("#error", Static).render())
        assert not seen
        for _ in range(6):
            await pilot.press("backspace")
        await pilot.press(*"12GiB", "enter")
        await wait_for(pilot, lambda: bool(seen))
    assert seen[0].target.gpu.memory_bytes == 12 * 1024**3


async def test_detected_gpu_is_listed_and_chosen(tmp_path):
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])))
    seen: list[TargetChosen] = []
    async with app.run_test(size=(80, 24), message_hook=_hook(seen)) as pilot:
        screen = app.screen
        table = screen.query_one("#gpus", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        row = [str(c) for c in table.get_row_at(0)]
        assert "NVIDIA GeForce RTX 4090" in row and "yes" in row
        assert any("0.5 GiB (1 proc)" in c for c in row)
        assert "driver 550.54.15" in str(screen.query_one("#status", Static).render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(seen))
    t = seen[0].target
    assert not t.dry_run and t.index == 0 and t.free_bytes == (24564 - 600) * 1024**2
    assert t.gpu.key == "rtx-4090"


async def test_zero_size_is_an_error_not_a_card(tmp_path):
    """`0GiB` is shaped like a size: it is refused, never matched to a card."""
    app = create_app(make_services(tmp_path))
    seen: list[TargetChosen] = []
    async with app.run_test(size=(80, 24), message_hook=_hook(seen)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.query_one("#dry").display)
        await pilot.press(*"0GiB", "enter")
        error = str(screen.query_one("#error", Static).render())
        assert "> 0" in error and "0GiB" in error
        await pilot.pause()
        assert not seen and isinstance(app.screen, HardwareScreen)


async def test_no_gpu_offers_this_machines_cpu_first(tmp_path):
    """No NVIDIA GPU: Enter plans for this machine's CPU (as `train` does for the tiny model)
    instead of a card the user does not have; typing a card still works (the test above)."""
    from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter

    app = create_app(make_services(tmp_path))
    seen: list[TargetChosen] = []
    async with app.run_test(size=(80, 24), message_hook=_hook(seen)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.query_one("#dry").display and screen.cpu is not None)
        assert "this machine's CPU" in str(screen.query_one("#status", Static).render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen))
    (msg,) = seen
    target = msg.target
    assert target.gpu.is_cpu() and not target.dry_run and target.index is None
    plan = PlanningAdapter().plan(ModelsAdapter().resolve("tuneplan:tiny"), target, None, {})
    assert plan.fits and plan.setup.compute_dtype == "float32" and plan.setup.method == "full"
    assert plan.raw.hardware.source == "cpu"
