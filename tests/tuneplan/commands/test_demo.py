"""`tuneplan demo`, headless: a real detached run of the tiny model to the end, loss falling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneplan.events import read_events, read_status

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_demo_runs_headless_to_a_finished_run_with_falling_loss(tmp_path):
    env = {**os.environ, "TUNEPLAN_CACHE_DIR": str(tmp_path / "cache"), "TUNEPLAN_PRESETS_DIR": str(tmp_path / "p"),
           "OMP_NUM_THREADS": "2"}
    env.pop("HF_HUB_OFFLINE", None)  # the demo switches the Hub off by itself
    runs = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "-m", "tuneplan", "demo", "--no-dashboard", "--runs-dir", str(runs), "--max-steps", "20"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=170,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "[1/4] model" in text and "[3/4] plan" in text
    assert ("training on the CPU" in text) or ("GPU found" in text)
    assert "done" in text and "(falling)" in text
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    status = read_status(run)
    assert status.phase == "done" and status.step == 20
    losses = [e.loss for e in read_events(run) if e.kind == "log"]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert f"loss {losses[0]:.3f} -> {losses[-1]:.3f}" in text
    assert (run / "train.log").is_file() and any((run / "checkpoints").iterdir())

    # the finished run becomes a preset with the evidence the training process recorded
    saved = subprocess.run([sys.executable, "-m", "tuneplan", "presets", "save", "from-demo", "--from", run.name,
                            "--runs-dir", str(runs)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    from tuneplan.services.presets import load_preset_file

    preset = load_preset_file(tmp_path / "p" / "from-demo.toml")
    ev = preset.evidence
    assert ev.environment_source == "run" and ev.torch_version and ev.gpu_name
    assert ev.steps == 20 and ev.outcome == "done" and ev.final_loss == pytest.approx(losses[-1])
    assert ev.tokens_per_second and ev.tokens_per_second > 0
    assert preset.effective_batch() == preset.config.setup.effective_batch()
    # the bundled model and dataset are named, not this machine's paths: the preset travels
    assert preset.config.model.source == "tuneplan:tiny" and preset.config.data.source == "tuneplan:sample-chat"
