"""Step 5: resolved configuration, equivalent command, presets, launch errors."""

from __future__ import annotations

import shutil

import pytest
from textual.widgets import Input, Static

from tuneplan.services.presets import find_preset
from tuneplan.data import SAMPLE_CHAT
from tuneplan.services.dataset_preview import preview_dataset
from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter
from tuneplan.ui.screens.review_screen import ReviewScreen
from tuneplan.ui.target import dry_run_target

from ui_helpers import review_screen, tiny_plan, wait_for


@pytest.mark.asyncio
async def test_shows_config_and_command_and_saves_a_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_PRESETS_DIR", str(tmp_path / "presets"))
    plan, dataset, _ = tiny_plan(tmp_path)
    async with review_screen(tmp_path, plan, dataset) as (pilot, screen):
        await pilot.press(*"12")  # max steps (focused first)
        command = str(screen.query_one("#command", Static).render())
        assert "tuneplan train --model" in command and f"--method {plan.setup.method}" in command
        assert "--max-steps 12" in command and "--vram 4GiB" in command
        # the command is for the target card (its dtype); the line says what differs here
        assert f"--compute-dtype {plan.setup.compute_dtype}" in command and plan.setup.compute_dtype != "float32"
        assert "no NVIDIA GPU" in command and "--force" in command and "float32" in command
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
    plan, dataset, data = tiny_plan(tmp_path)
    async with review_screen(tmp_path, plan, dataset) as (pilot, screen):
        data.unlink()  # the dataset vanished since the preview
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: not screen.launching)
        warning = str(screen.query_one("#warning", Static).render())
        assert "data.jsonl" in warning and isinstance(pilot.app.screen, ReviewScreen)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_equivalent_command_fixes_every_knob_the_planner_would_choose(tmp_path):
    """The review's command line, read by the real `tuneplan train` parser, gives the same
    setup and leaves nothing to plan (so it runs as is, even without a GPU to plan for)."""
    import shlex

    from tuneplan.cli import build_parser
    from tuneplan.commands import train
    from tuneplan.ui.adapters import RunsAdapter

    plan, dataset, _ = tiny_plan(tmp_path)
    runs = RunsAdapter(tmp_path / "runs")
    for config in (runs.build_config(plan, dataset, max_steps=5), runs.build_config(plan, dataset, on_cpu=True)):
        args = build_parser().parse_args(shlex.split(runs.train_command(config))[1:])
        assert train.given_setup(args).auto() == []
        for knob, value in train.given_setup(args).fixed().items():
            assert getattr(config.setup, knob) == value, knob


@pytest.mark.asyncio
async def test_dry_run_command_reproduces_the_plan_on_the_target_card(tmp_path, monkeypatch):
    """Planned for an L40 on a machine without a GPU: the command, read by the real `train`
    parser, gives the plan's configuration for the L40 (bfloat16, not the CPU's float32), needs
    no planning, passes the machine check on an L40 and is refused here without --force."""
    import shlex

    from fake_nvml import FakeNVML, NVMLError, gpu_device
    from tuneplan.cli import build_parser
    from tuneplan.commands import train
    from tuneplan.errors import UserError
    from tuneplan.services import gpu as gpu_service

    plan0, dataset, _ = tiny_plan(tmp_path)
    plan = PlanningAdapter().plan(plan0.model, dry_run_target("l40"), dataset, {})
    assert plan.setup.compute_dtype == "bfloat16"
    async with review_screen(tmp_path, plan, dataset) as (pilot, screen):
        await pilot.press(*"7")
        command = screen.equivalent_command()
        shown = str(screen.query_one("#command", Static).render())
        assert command in shown and "L40" in shown and "no NVIDIA GPU" in shown
        launch = screen.build_config()  # a launch from this screen, here: the CPU rule
        assert launch.setup.compute_dtype == "float32"
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert train.given_setup(args).auto() == []  # nothing left to plan: it runs as shown
    config = train.build_config(args)
    assert config.setup == plan.setup  # every knob, the dtype included
    assert config.training.max_steps == 7 and args.gpu == "l40"
    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML(
        [gpu_device("NVIDIA L40", 46068, cc=(8, 9))])))
    gpus, notes = train.check_machine(args)  # on the rented L40: accepted as is
    assert len(gpus) == 1 and notes == []
    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML(
        init_error=NVMLError("NVML Shared Library Not Found"))))
    with pytest.raises(UserError, match="--gpu l40: this machine has no NVIDIA GPU"):
        train.check_machine(args)  # here: refused unless --force


@pytest.mark.asyncio
async def test_launching_a_gated_model_without_a_token_is_refused(tmp_path, monkeypatch):
    """As with `tuneplan train`: no Hub token, no launch (one red line, no run folder)."""
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    data = tmp_path / "data.jsonl"
    shutil.copy(SAMPLE_CHAT, data)
    dataset = preview_dataset(str(data))
    plan = PlanningAdapter().plan(ModelsAdapter().resolve("llama-3.1-8b"), dry_run_target("3060"), dataset, {})
    async with review_screen(tmp_path, plan, dataset, local_gpus=1) as (pilot, screen):
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: not screen.launching)
        warning = str(screen.query_one("#warning", Static).render())
        assert "gated" in warning and "HF_TOKEN" in warning and isinstance(pilot.app.screen, ReviewScreen)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.asyncio
async def test_tracking_choice_goes_into_the_config_and_the_command(tmp_path, monkeypatch):
    import tuneplan.services.tracking as tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else object() if name == "tensorboard"
                        else real(name, *a))
    plan, dataset, _ = tiny_plan(tmp_path)
    async with review_screen(tmp_path, plan, dataset) as (pilot, screen):
        screen.query_one("#report_to").focus()
        await pilot.press("right")  # none -> tensorboard
        assert screen.build_config().training.report_to == "tensorboard"
        assert "--report-to tensorboard" in str(screen.query_one("#command", Static).render())
        assert 'report_to = "tensorboard"' in str(screen.query_one("#config", Static).render())
        await pilot.press("right", "right")  # trackio -> wandb (not installed here)
        warning = str(screen.query_one("#warning", Static).render())
        assert "needs the wandb package" in warning and "pip install wandb" in warning


@pytest.mark.asyncio
async def test_bake_off_key_shows_the_compare_command_and_starts_it_detached(tmp_path):
    import time

    plan, dataset, data = tiny_plan(tmp_path)
    async with review_screen(tmp_path, plan, dataset) as (pilot, screen):
        await pilot.press(*"7")  # max steps: the trial length
        data.unlink()  # the job then stops at its input check, in one line, before any trial starts
        await pilot.press("ctrl+b")
        await wait_for(pilot, lambda: not screen.comparing)
        text = str(screen.query_one("#compare", Static).render())
        assert "tuneplan compare --model" in text and "--max-steps 7" in text and "--vram 4GiB" in text
        assert "Bake-off started (pid" in text and isinstance(pilot.app.screen, ReviewScreen)
    log = next((tmp_path / "runs" / "compare").glob("compare-*.log"))
    deadline = time.monotonic() + 60
    while "error" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneplan: error:") and "data.jsonl" in lines[0]
    assert not [p for p in (tmp_path / "runs" / "compare").iterdir() if p.is_dir()]  # no comparison was made
