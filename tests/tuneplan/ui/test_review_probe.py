"""Review screen: "probe first" runs `tuneplan probe` in a worker and shows its report."""

from __future__ import annotations

import shutil

import pytest
from textual.widgets import Static

from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG
from tuneplan.services.dataset_preview import preview_dataset
from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter
from tuneplan.ui.app import create_app
from tuneplan.ui.screens.review_screen import ReviewScreen
from tuneplan.ui.target import dry_run_target

from ui_helpers import make_services, wait_for


@pytest.mark.slow
@pytest.mark.asyncio
async def test_probe_first_shows_measured_beside_predicted(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")  # config only: the probe uses random weights
    data = tmp_path / "data.jsonl"
    shutil.copy(SAMPLE_CHAT, data)
    model = ModelsAdapter().resolve(str(folder))
    dataset = preview_dataset(str(data))
    plan = PlanningAdapter().plan(model, dry_run_target("4GiB"), dataset, {"seq_len": 64, "micro_batch": 2})
    app = create_app(make_services(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.local_gpus = 0
        await app.push_screen(ReviewScreen(plan, dataset))
        screen = app.screen
        await pilot.press("ctrl+p")
        assert screen.probing and "Probing" in str(screen.query_one("#probe", Static).render())
        await wait_for(pilot, lambda: not screen.probing, timeout=240)
        text = str(screen.query_one("#probe", Static).render())
        assert "(random weights)" in text and "predicted" in text and "measured" in text, text
        assert "CPU RSS" in text and "Advice:" in text
        assert isinstance(app.screen, ReviewScreen)  # nothing was launched
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
