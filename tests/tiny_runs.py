"""The tiny CPU run the tests launch: a fully fixed configuration on the tiny model and the
bundled sample dataset (the fixtures that build the model live in tests/tuneplan/conftest.py),
and `tuneplan` run as a real process against a private runs root, with waits on its files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from planner.setup import TrainSetup
from tuneplan.config import DataConfig, ModelConfig, RunConfig, TrainingConfig, save_config
from tuneplan.data import SAMPLE_CHAT
from tuneplan.events import FINAL_PHASES, effective_phase, read_status

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(model_dir, **changes) -> RunConfig:
    """A small, fully fixed CPU run on the tiny model and the sample dataset."""
    setup = TrainSetup(method="lora", compute_dtype="float32", micro_batch=4, grad_accum=1, seq_len=64,
                       packing=False, grad_checkpointing=False, optimizer="adamw", attn="sdpa", fused_ce=True,
                       lora_rank=8, lora_alpha=16, lora_dropout=0.0)
    config = RunConfig(
        model=ModelConfig(source=str(model_dir)),
        data=DataConfig(source=str(SAMPLE_CHAT), eval_fraction=0.05),
        setup=setup,
        training=TrainingConfig(max_steps=24, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=2,
                                save_steps=12, save_total_limit=2),
    )
    for section, values in changes.items():
        config = replace(config, **{section: replace(getattr(config, section), **values)})
    return config


def cli_env(runs_root: Path, **extra) -> dict:
    return {**os.environ, "TUNEPLAN_RUNS_DIR": str(runs_root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT), **extra}


def tuneplan(runs_root: Path, *argv: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneplan", *argv], capture_output=True, text=True,
                          env=cli_env(runs_root, **env), cwd=ROOT, timeout=300)


def write_config(tmp_path, config, name="run.toml") -> Path:
    path = tmp_path / name
    save_config(config, path)
    return path


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_final(run_dir, timeout=180.0):
    return wait_for(lambda: effective_phase(read_status(run_dir)) in FINAL_PHASES and read_status(run_dir),
                    timeout, f"{run_dir.name} to finish")
