"""Step 5: resolved configuration, equivalent command, presets, launch errors."""

from __future__ import annotations

import shutil

import pytest
from textual.widgets import Input, Static

from tuneplan.services.presets import find_preset
from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG
from tuneplan.services.dataset_preview import preview_dataset
from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter
from tuneplan.ui.app import create_app
from tuneplan.ui.screens.review_screen import ReviewScreen
from tuneplan.ui.target import dry_run_target

from ui_helpers import make_services, wait_for



def _plan(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")
    data = tmp_path / "data.jsonl"
    shutil.copy(SAMPLE_CHAT, data)
    model = ModelsAdapter().resolve(str(folder))
    dataset = preview_dataset(str(data))
    return PlanningAdapter().plan(model, dry_run_target("4GiB"), dataset, {}), dataset, data


@pytest.mark.asyncio
async def test_shows_config_and_command_and_saves_a_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_PRESETS_DIR", str(tmp_path / "presets"))
    plan, dataset, _ = _plan(tmp_path)
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.local_gpus = 0
        await app.push_screen(ReviewScreen(plan, dataset))
        screen = app.screen
        await pilot.press(*"12")  # max steps (focused first)
        command = str(screen.query_one("#command", Static).render())
        assert "tuneplan train --model" in command and f"--method {plan.setup.method}" in command
        assert "--max-steps 12" in command and "--compute-dtype float32" in command
        config = str(screen.query_one("#config", Static).render())
        assert "[setup]" in config and "max_steps = 12" in config
        warning = str(screen.query_one("#warning", Static).render())
        assert "trains on the CPU" in warning and "on the planned card" in warning
        screen.query_one("#preset_name", Input).value = "my-tiny"
        await pilot.press("ctrl+s")
        path = tmp_path / "presets" / "my-tiny.toml"
        assert path.is_file()
        saved = find_preset("my-tiny")  # the presets service reads back what the wizard wrote
        assert saved.config.setup.seq_len == plan.setup.seq_len and saved.config.training.max_steps == 12
        assert saved.config.setup.compute_dtype == plan.setup.compute_dtype  # the plan's, not the CPU's
        before = path.read_text()
        await pilot.press("ctrl+s")  # the same name again: refused, file untouched
        assert path.read_text() == before


@pytest.mark.asyncio
async def test_launch_error_is_one_red_line_and_no_run_is_left(tmp_path):
    plan, dataset, data = _plan(tmp_path)
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.local_gpus = 0
        await app.push_screen(ReviewScreen(plan, dataset))
        screen = app.screen
        data.unlink()  # the dataset vanished since the preview
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: not screen.launching)
        warning = str(screen.query_one("#warning", Static).render())
        assert "data.jsonl" in warning and isinstance(app.screen, ReviewScreen)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_equivalent_command_fixes_every_knob_the_planner_would_choose(tmp_path):
    """The review's command line, read by the real `tuneplan train` parser, gives the same
    setup and leaves nothing to plan (so it runs as is, even without a GPU to plan for)."""
    import shlex

    from tuneplan.cli import build_parser
    from tuneplan.commands import train
    from tuneplan.ui.adapters import RunsAdapter

    plan, dataset, _ = _plan(tmp_path)
    runs = RunsAdapter(tmp_path / "runs")
    for config in (runs.build_config(plan, dataset, max_steps=5), runs.build_config(plan, dataset, on_cpu=True)):
        args = build_parser().parse_args(shlex.split(runs.train_command(config))[1:])
        assert train._auto_knobs(args) == []
        for knob, value in train._setup_changes(args).items():
            assert getattr(config.setup, knob) == value, knob


@pytest.mark.asyncio
async def test_tracking_choice_goes_into_the_config_and_the_command(tmp_path, monkeypatch):
    import tuneplan.services.tracking as tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else object() if name == "tensorboard"
                        else real(name, *a))
    plan, dataset, _ = _plan(tmp_path)
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.local_gpus = 0
        await app.push_screen(ReviewScreen(plan, dataset))
        screen = app.screen
        screen.query_one("#report_to").focus()
        await pilot.press("right")  # none -> tensorboard
        assert screen.build_config().training.report_to == "tensorboard"
        assert "--report-to tensorboard" in str(screen.query_one("#command", Static).render())
        assert 'report_to = "tensorboard"' in str(screen.query_one("#config", Static).render())
        await pilot.press("right", "right")  # trackio -> wandb (not installed here)
        warning = str(screen.query_one("#warning", Static).render())
        assert "needs the wandb package" in warning and "pip install wandb" in warning
