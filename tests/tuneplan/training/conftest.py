"""Shared fixtures of the training tests: one tiny model per session, run configs on it."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from planner.setup import TrainSetup
from tuneplan.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from tuneplan.data import SAMPLE_CHAT

# Two shared cores: keep torch from oversubscribing them in this process and in children.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tuneplan.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


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


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def trained_lora_run(tiny_model, tmp_path_factory):
    """One real LoRA run (24 steps, in-process worker), shared by the tests that read it:
    (run_dir, WorkerResult)."""
    from tuneplan.services.launcher import prepare_run
    from tuneplan.training.runner import run_worker

    root = tmp_path_factory.mktemp("shared-runs")
    run_dir = prepare_run(tiny_config(tiny_model), root)
    return run_dir, run_worker(run_dir, install_signals=False)
