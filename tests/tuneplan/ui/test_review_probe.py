"""Review screen: "probe first" runs `tuneplan probe` in a worker and shows its report."""

from __future__ import annotations


import pytest
from textual.widgets import Static

from tuneplan.ui.screens.review_screen import ReviewScreen

from ui_helpers import review_screen, tiny_plan, wait_for


@pytest.mark.slow
@pytest.mark.asyncio
async def test_probe_first_shows_measured_beside_predicted(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the tiny model's folder has only its config.json: the probe uses random weights
    plan, dataset, _ = tiny_plan(tmp_path, {"seq_len": 64, "micro_batch": 2})
    async with review_screen(tmp_path, plan, dataset) as (pilot, screen):
        await pilot.press("ctrl+p")
        assert screen.probing and "Probing" in str(screen.query_one("#probe", Static).render())
        await wait_for(pilot, lambda: not screen.probing, timeout=240)
        text = str(screen.query_one("#probe", Static).render())
        assert "(random weights)" in text and "predicted" in text and "measured" in text, text
        assert "CPU RSS" in text and "Advice:" in text
        assert isinstance(pilot.app.screen, ReviewScreen)  # nothing was launched
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
