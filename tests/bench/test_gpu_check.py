"""bench/gpu_check.py: the GPU matrix is predicted in seconds, cases too big for a card are
skipped with the reason, and `--dry-run` runs one real tiny probe on the CPU."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.gpus import GiB, get_gpu
from planner.solver import Hardware

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_a_small_card_skips_what_it_cannot_hold_with_the_reason():
    gc = _module()
    cases = gc.matrix()
    names = [c.name for c in cases]
    assert "70b-qlora-ckpt-mb1" in names and "8b-solver-choice" in names and any("moe" in n for n in names)
    long = next(c for c in cases if c.name == "long-8b-qlora-32k")
    assert long.setup.offload_activations and long.setup.tiled_mlp and long.setup.chunked_norm
    assert long.setup.seq_len == 32768
    assert sum(n.startswith("8b-") and "solver" not in n for n in names) == 8
    hw = Hardware(gpu=get_gpu("rtx-4090"), source="catalog")
    gc.prepare(cases, hw)
    by = {c.name: c for c in cases}
    assert by["70b-qlora-ckpt-mb1"].status == "skipped" and "needs" in by["70b-qlora-ckpt-mb1"].reason
    assert by["8b-qlora-ckpt-mb1"].status == "pending"  # 8B QLoRA fits 24 GB
    for c in cases:  # a skipped case is one the planner says the card cannot hold
        assert (c.status == "skipped") == (c.predicted["device_bytes"] > hw.usable_bytes())
    # the solver's own choice is made for this card, so it fits
    assert by["8b-solver-choice"].status == "pending" and by["8b-solver-choice"].predicted["device_bytes"] < 24 * GiB


@pytest.mark.slow
def test_dry_run_prints_the_matrix_and_runs_one_tiny_case(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNEPLAN_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--results-dir",
                           str(tmp_path / "results")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for name in ("8b-lora-ckpt-mb1", "8b-qlora-nockpt-mb4", "70b-qlora-ckpt-mb1", "moe-qwen3-30b-a3b", "8b-solver-choice"):
        assert name in out
    assert "NVIDIA H200" in out and "GiB" in out
    seconds = float(out.split("(matrix predicted in ")[1].split(" s)")[0])
    assert seconds < 10
    csvs = list((tmp_path / "results").glob("gpu_check-dry-run-*.csv"))
    mds = list((tmp_path / "results").glob("gpu_check-dry-run-*.md"))
    assert len(csvs) == len(mds) == 1
    rows = {r["case"]: r for r in csv.DictReader(csvs[0].open())}
    assert len(rows) == 13 and rows["70b-qlora-ckpt-mb1"]["status"] == "predicted"
    # the long-context case: planned with its offloaded activations, on the card with room to spare
    assert rows["long-8b-qlora-32k"]["status"] == "predicted"
    assert 8 * 1024**3 < int(rows["long-8b-qlora-32k"]["device_bytes_predicted"]) < 40 * 1024**3
    assert int(rows["70b-qlora-ckpt-mb1"]["device_bytes_predicted"]) > 40 * 1024**3  # 70B in 4-bit and more
    tiny = rows["tiny-cpu-random"]
    assert tiny["status"] == "measured" and int(tiny["torch_peak_bytes_measured"]) > 0
    assert abs(float(tiny["torch_peak_bytes_error"])) < 0.05  # the planner's CPU step, measured
    assert "70b-qlora-ckpt-mb1" in mds[0].read_text() and "tiny-cpu-random" in mds[0].read_text()
