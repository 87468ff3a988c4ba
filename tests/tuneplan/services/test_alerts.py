"""Alerts from real detached runs to a local webhook on 127.0.0.1: done (with its summary),
an out-of-memory re-plan in one run; a NaN loss (injected), which fails the run, in another; stalled (SIGSTOP of the
trainer) and crashed (kill -9 of the trainer) in another. Each alert arrives exactly once."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.local_http import Recorder
from tiny_runs import tiny_config
from tuneplan.events import read_events, read_status
from tuneplan.services.launcher import launch, wait_for_phase


def _kinds(requests):
    return [json.loads(body)["event"] for _, _, _, body in requests]


def _each_once(hook, kinds: list[str]) -> dict:
    """The alerts the hook received, by kind: exactly `kinds`, each once."""
    received = _kinds(hook.requests)
    assert sorted(received) == kinds, received
    return {json.loads(b)["event"]: json.loads(b) for _, _, _, b in hook.requests}


def _run_to_the_end(config, runs_root, phase: str):
    """Launch a real detached run and wait until it ends in `phase` (else show its log)."""
    run_dir = launch(config, runs_root)
    status = wait_for_phase(run_dir, ("done", "failed", "crashed"), 240)
    assert status.phase == phase, (run_dir / "train.log").read_text()[-3000:]
    return run_dir


@pytest.mark.slow
def test_done_and_replan_alerts_each_once(tiny_model, runs_root):
    with Recorder() as hook:
        config = tiny_config(tiny_model, training={"max_steps": 10, "logging_steps": 1, "save_steps": 100},
                             data={"eval_fraction": 0.05},
                             debug={"oom_at_step": 2, "oom_micro_batch_above": 2},
                             notify={"url": hook.url + "/hook"})
        run_dir = _run_to_the_end(config, runs_root, "done")
        # the supervisor flushes its alerts before it exits (wait_for_phase waited for its pid)
        assert hook.wait_for(lambda r: "done" in _kinds(r), 10)
    by_kind = _each_once(hook, ["done", "replan"])
    assert by_kind["replan"]["details"]["changes"]["micro_batch"] == [4, 2]
    done = by_kind["done"]
    assert done["details"]["output"] == str(run_dir / "adapter") and (run_dir / "adapter").is_dir()
    logged = [(e.step, e.loss) for e in read_events(run_dir) if e.kind == "log"]
    restart = max(i for i, (step, _) in enumerate(logged) if step == 1)  # the re-planned attempt's curve
    assert done["details"]["loss_curve"][:6] == [list(x) for x in logged[restart:restart + 6]]
    text = done["text"]
    assert "loss " in text and "steps in" in text and "cost: none (trained on the CPU)" in text
    assert f"adapter: {run_dir / 'adapter'}" in text and "eval loss" in text
    assert len(text.splitlines()) <= 24  # one screen


@pytest.mark.slow
def test_nan_then_failed_alerts_each_once(tiny_model, runs_root):
    with Recorder() as hook:
        config = tiny_config(tiny_model, training={"max_steps": 8, "logging_steps": 1, "save_steps": 100},
                             data={"eval_fraction": 0.0}, debug={"poison_at_step": 3},
                             notify={"url": hook.url + "/hook"})
        _run_to_the_end(config, runs_root, "failed")
        assert hook.wait_for(lambda r: "failed" in _kinds(r), 10)
    by_kind = _each_once(hook, ["failed", "nan"])
    assert by_kind["nan"]["title"].endswith("loss is not finite at step 4"), by_kind["nan"]["title"]
    assert "non-finite loss nan" in by_kind["failed"]["text"], by_kind["failed"]["text"]


@pytest.mark.slow
def test_stalled_then_crashed_alerts_each_once(tiny_model, runs_root):
    with Recorder() as hook:
        config = tiny_config(tiny_model, training={"max_steps": 500, "logging_steps": 1, "save_steps": 1000},
                             data={"eval_fraction": 0.0}, debug={"step_sleep_seconds": 0.05},
                             notify={"url": hook.url, "stall_minutes": 0.1})  # 6 s
        run_dir = launch(config, runs_root)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = read_status(run_dir)
            if status and status.phase == "training" and status.step >= 2 and len(status.pids) == 2:
                break
            time.sleep(0.1)
        worker = read_status(run_dir).pids[1]
        os.kill(worker, signal.SIGSTOP)  # a hung trainer: alive, no steps
        try:
            assert hook.wait_for(lambda r: "stalled" in _kinds(r), 30), _kinds(hook.requests)
        finally:
            os.kill(worker, signal.SIGKILL)  # then it dies without a word
        status = wait_for_phase(run_dir, ("done", "failed", "crashed"), 60)
        assert status.phase == "crashed" and "killed by signal 9" in status.error
        assert hook.wait_for(lambda r: "crashed" in _kinds(r), 10)
    kinds = _kinds(hook.requests)
    assert kinds == ["stalled", "crashed"], kinds
    crashed = json.loads(hook.requests[1][3])
    assert "killed by signal 9" in crashed["text"] and crashed["run"] == run_dir.name
