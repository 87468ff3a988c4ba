"""The live-tensor counter of `tuneplan probe` on the CPU (tuneplan/training/memory_tracker.py):
a storage counts once however many views share it, stops counting when Python frees it, and
the peak keeps the breakdown it had."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from planner.setup import TrainSetup  # noqa: E402
from tuneplan.training.memory_tracker import LiveTensorTracker, classify_model, token_dataset  # noqa: E402


def test_views_count_once_and_freed_storages_stop_counting():
    tracker = LiveTensorTracker()
    tracker.set_phase("forward")
    with tracker:
        a = torch.ones(256, dtype=torch.float32)  # 1 KiB
        view = a[:128]
        b = a * 2  # a second storage
        assert tracker.current == 2 * 1024
        del b
        assert tracker.current == 1024
        del view
        assert tracker.current == 1024  # `a` still holds the storage
    assert tracker.peak == 2 * 1024 and tracker.peak_breakdown == {"forward": 2 * 1024}
    assert tracker.peak_where == (0, "forward")


def test_the_model_is_the_baseline_by_kind():
    model = torch.nn.Linear(8, 4)
    model.weight.requires_grad_(False)
    tracker = LiveTensorTracker()
    classify_model(tracker, model)
    assert tracker.by_cat == {"unquantized_weights": 8 * 4 * 4, "adapter_weights": 4 * 4}


def test_token_rows_are_exactly_seq_len_long_and_enough_for_the_steps():
    setup = TrainSetup(micro_batch=2, grad_accum=3, seq_len=16)
    rows = token_dataset(100, setup, steps=2)
    assert len(rows) == 2 * 3 * 2
    assert {len(r) for r in rows["input_ids"]} == {16}
    assert min(min(r) for r in rows["input_ids"]) >= 3  # below are pad / bos / eos
