"""Snapshots of the key screens at 80x24 (update with `pytest --snapshot-update` after
checking the new SVGs by eye)."""

from __future__ import annotations

from tuneplan.ui.app import create_app
from tuneplan.ui.screens.dataset_screen import DatasetScreen

from ui_helpers import FakeNVML, make_services, rtx_4090, wait_for


def test_hardware_without_gpu_offers_dry_run(snap_compare, tmp_path, monkeypatch):
    from tuneplan.services import gpu as gpu_service

    # the RAM figure of the "this machine (CPU)" row: fixed at the psutil boundary, not this machine's
    monkeypatch.setattr(gpu_service, "ram_bytes", lambda: (32 * 1024**3, 24 * 1024**3))
    app = create_app(make_services(tmp_path))

    async def ready(pilot):
        await wait_for(pilot, lambda: app.screen.query_one("#dry").display)

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)


def test_hardware_with_a_detected_gpu(snap_compare, tmp_path):
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])))

    async def ready(pilot):
        await wait_for(pilot, lambda: app.screen.query_one("#gpus").row_count == 1)

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)


def test_dataset_preview(snap_compare, tmp_path, monkeypatch):
    # The planner's figures change as its model is refined, so the plan screen is covered
    # by pilot tests on behaviour rather than by a snapshot.
    import shutil

    from tuneplan.data import SAMPLE_CHAT

    monkeypatch.chdir(tmp_path)
    shutil.copy(SAMPLE_CHAT, tmp_path / "chat.jsonl")
    app = create_app(make_services(tmp_path))

    async def ready(pilot):
        await wait_for(pilot, lambda: app.screen.query_one("#dry").display)
        await app.push_screen(DatasetScreen(model=None))
        app.screen.query_one("#dataset-input").value = "chat.jsonl"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.preview is not None)

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)


def test_dashboard_of_a_finished_run(snap_compare, tmp_path, recorded_run):
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])), run_dir=recorded_run("tiny-done"))

    async def ready(pilot):
        await wait_for(pilot, lambda: getattr(app.screen, "snapshot", None) is not None
                       and app.screen.gpu_sample is not None)

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)


def test_dashboard_of_a_crashed_run(snap_compare, tmp_path, recorded_run):
    app = create_app(make_services(tmp_path), run_dir=recorded_run("tiny-crashed"))

    async def ready(pilot):
        await wait_for(pilot, lambda: getattr(app.screen, "snapshot", None) is not None
                       and app.screen.gpu_sample is not None)

    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)
