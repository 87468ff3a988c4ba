"""`tuneplan train / runs / stop / save / resume` end to end: real detached processes
training the tiny model on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_runs import ROOT, cli_env, tiny_config, tuneplan, wait_final, wait_for, write_config
from tuneplan.config import load_config
from tuneplan.events import read_events, read_status

SECRET = "hf_tuneplanTestSecretToken123"


def _only_run(runs_root: Path) -> Path:
    runs = [p for p in runs_root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _phase(run_dir):
    status = read_status(run_dir)
    return status.phase if status else None


def _logs(run_dir):
    return [e for e in read_events(run_dir) if e.kind == "log"]


# --- detach -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_detached_run_survives_launcher_kill_and_sighup(tiny_model, runs_root, tmp_path):
    config = write_config(tmp_path, tiny_config(tiny_model, training={"max_steps": 16, "save_steps": 8},
                                          debug={"step_sleep_seconds": 0.05}))
    # A "terminal": a shell in its own session runs the launcher and then lingers, like a login shell.
    terminal = subprocess.Popen(
        ["bash", "-c", f'"{sys.executable}" -m tuneplan train --config "{config}"; sleep 60'],
        env=cli_env(runs_root, HF_TOKEN=SECRET), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        run_dir = wait_for(lambda: next((p for p in runs_root.iterdir() if (p / "status.json").exists()), None),
                           60, "the run folder")
        wait_for(lambda: _phase(run_dir) in ("loading", "tokenizing", "training"), 60, "the run to start")
        pids = read_status(run_dir).pids
        assert all(os.getsid(p) != os.getsid(terminal.pid) for p in pids)  # its own session
        os.killpg(terminal.pid, signal.SIGHUP)  # the terminal closes: SIGHUP to its process group...
        os.killpg(terminal.pid, signal.SIGKILL)  # ...and the launcher side is gone for good
        for pid in pids:  # a stray SIGHUP straight to the run is ignored too
            os.kill(pid, signal.SIGHUP)
        terminal.wait(10)
        status = wait_final(run_dir)
        out = terminal.stdout.read()
    finally:
        if terminal.poll() is None:
            os.killpg(terminal.pid, signal.SIGKILL)
    assert status.phase == "done" and status.step == 16, status
    assert f"started run {run_dir.name}" in out and "tuneplan attach" in out
    logs = _logs(run_dir)
    assert logs[-1].loss < logs[0].loss
    listing = tuneplan(runs_root, "runs")
    assert run_dir.name in listing.stdout and "done" in listing.stdout and "16/16" in listing.stdout
    for path in run_dir.rglob("*"):  # the Hub token never lands in the run folder
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# --- stop / save / resume -------------------------------------------------------------------------

@pytest.mark.slow
def test_save_stop_resume_continue_the_step_count(tiny_model, runs_root, tmp_path):
    config = write_config(tmp_path, tiny_config(tiny_model, setup={"micro_batch": 2, "grad_accum": 2},
                                          training={"max_steps": 30, "save_steps": 1000, "logging_steps": 1},
                                          debug={"step_sleep_seconds": 0.15}))
    out = tuneplan(runs_root, "train", "--config", str(config), "--name", "ctl")
    assert out.returncode == 0, out.stderr
    run_dir = runs_root / "ctl"
    wait_for(lambda: read_status(run_dir).step >= 3, 120, "step 3")
    saved = tuneplan(runs_root, "save", "ctl")
    assert saved.returncode == 0, saved.stderr
    first_ckpt = wait_for(lambda: [e for e in read_events(run_dir) if e.kind == "checkpoint"], 60, "the checkpoint")
    assert _phase(run_dir) == "training"  # saving does not stop the run
    stopped = tuneplan(runs_root, "stop", "ctl", "--wait", "--timeout", "120")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = read_status(run_dir)
    assert status.phase == "stopped" and 3 <= status.step < 30
    assert status.last_checkpoint.endswith(f"checkpoint-{status.step}")
    assert first_ckpt[0].step < status.step
    stop_step = status.step
    assert "stopped" in tuneplan(runs_root, "runs").stdout

    resumed = tuneplan(runs_root, "resume", "ctl")
    assert resumed.returncode == 0, resumed.stderr
    assert "effective batch 4" in resumed.stdout
    status = wait_final(run_dir)
    assert status.phase == "done" and status.step == 30, status
    steps = [e.step for e in _logs(run_dir)]
    assert steps == list(range(1, 31)), steps  # no step twice, none missing
    # The same effective batch after the resume: epochs advance by 4 rows per step throughout.
    per_step = {e.step: e.epoch for e in _logs(run_dir)}
    rate_before = per_step[stop_step] / stop_step
    rate_after = (per_step[30] - per_step[stop_step]) / (30 - stop_step)
    assert rate_after == pytest.approx(rate_before, rel=1e-6)
    assert load_config(run_dir / "config.toml").setup.effective_batch() == 4


@pytest.mark.slow
@pytest.mark.parametrize("started_ignoring_sigint", [False, True])
def test_foreground_ctrl_c_checkpoints_and_stops(tiny_model, runs_root, tmp_path, started_ignoring_sigint):
    # a shell without job control starts `cmd &` with SIGINT ignored: Ctrl-C must still mean the same
    config = write_config(tmp_path, tiny_config(tiny_model, training={"max_steps": 200, "save_steps": 1000},
                                          debug={"step_sleep_seconds": 0.05}))
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if started_ignoring_sigint else None
    proc = subprocess.Popen([sys.executable, "-m", "tuneplan", "train", "--config", str(config), "--name", "fg",
                             "--foreground"], env=cli_env(runs_root), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=ignore)
    run_dir = runs_root / "fg"
    try:
        wait_for(lambda: (run_dir / "status.json").exists() and read_status(run_dir).step >= 2, 120, "step 2")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out + err
    status = read_status(run_dir)
    assert status.phase == "stopped" and 2 <= status.step < 200
    assert status.last_checkpoint.endswith(f"checkpoint-{status.step}")
    assert "stopping" in err and "[stopped]" in out, out + err
    # as `tuneplan stop` does, it says how to continue (issue 19, item 12)
    assert "continue later with `tuneplan resume fg`" in err and "continue with `tuneplan resume fg`" in err, err


# --- OOM recovery -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_injected_oom_replans_and_recovers_with_the_same_effective_batch(tiny_model, runs_root, tmp_path):
    config = write_config(tmp_path, tiny_config(tiny_model, setup={"micro_batch": 4, "grad_accum": 1},
                                          training={"max_steps": 12, "save_steps": 4},
                                          debug={"oom_at_step": 6, "oom_micro_batch_above": 2}))
    out = tuneplan(runs_root, "train", "--config", str(config), "--name", "oom", "--foreground")
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = runs_root / "oom"
    status = read_status(run_dir)
    assert status.phase == "done" and status.step == 12 and status.attempt == 1
    events = list(read_events(run_dir))
    replans = [e for e in events if e.kind == "replan"]
    assert len(replans) == 1
    r = replans[0]
    assert r.changes == {"micro_batch": [4, 2], "grad_accum": [1, 2]} and r.effective_batch == 4
    assert r.resume_from.endswith("checkpoint-4") and "out of memory at step 6" in r.reason
    assert "[replan 1]" in out.stdout  # shown to the user
    steps = [e.step for e in events if e.kind == "log"]
    assert steps[-1] == 12 and steps.count(6) == 1  # step 6 was redone after the resume, once logged
    s = load_config(run_dir / "config.toml").setup
    assert (s.micro_batch, s.grad_accum) == (2, 2)
    assert load_config(run_dir / "config.attempt-0.toml").setup.micro_batch == 4


# --- bad input ----------------------------------------------------------------------------------------

def _bad(tmp_path, runs_root, tiny_model, dataset_text=None, *, model=None, env=None, suffix=".jsonl"):
    data = tmp_path / f"data{suffix}"
    if dataset_text is not None:
        data.write_text(dataset_text)
    config = tiny_config(tiny_model)
    from dataclasses import replace

    config = replace(config, data=replace(config.data, source=str(data) if dataset_text is not None
                                          else config.data.source),
                     model=replace(config.model, source=model or str(tiny_model)))
    out = tuneplan(runs_root, "train", "--config", str(write_config(tmp_path, config)), **(env or {}))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneplan: error: "), out.stderr
    assert "Traceback" not in out.stderr
    assert list(runs_root.iterdir()) == []  # no half-written run folder
    return lines[0]


def test_unknown_columns(tmp_path, runs_root, tiny_model):
    line = _bad(tmp_path, runs_root, tiny_model, '{"question": "a", "answer": "b"}\n')
    assert "question, answer" in line and "prompt, completion" in line


def test_empty_dataset(tmp_path, runs_root, tiny_model):
    assert "has no rows" in _bad(tmp_path, runs_root, tiny_model, "\n")


def test_corrupt_jsonl_line_is_named(tmp_path, runs_root, tiny_model):
    good = json.dumps({"prompt": "a", "completion": "b"})
    line = _bad(tmp_path, runs_root, tiny_model, f"{good}\n{good}\n{{oops\n")
    assert "data.jsonl line 3" in line


def test_missing_model_folder(tmp_path, runs_root, tiny_model):
    line = _bad(tmp_path, runs_root, tiny_model, model=str(tmp_path / "no-such-model"))
    assert "no-such-model" in line and "does not exist" in line


def test_no_disk_space(tmp_path, runs_root, tiny_model):
    line = _bad(tmp_path, runs_root, tiny_model, env={"TUNEPLAN_FAKE_FREE_BYTES": "1000"})
    assert "not enough disk space" in line


@pytest.mark.slow
def test_failure_in_the_training_process_is_final_not_healthy(tiny_model, runs_root, tmp_path):
    """A problem only the child can see (corrupt weights behind a valid config.json) -> phase
    failed with the error and a log tail; `runs` says so."""
    import shutil
    from dataclasses import replace

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    config = tiny_config(tiny_model)
    config = replace(config, model=replace(config.model, source=str(broken)))
    out = tuneplan(runs_root, "train", "--config", str(write_config(tmp_path, config)), "--name", "bad", "--foreground")
    assert out.returncode == 3, out.stdout + out.stderr
    status = read_status(runs_root / "bad")
    assert status.phase == "failed" and status.error.startswith("while loading the model") and status.log_tail
    listing = tuneplan(runs_root, "runs").stdout
    assert "failed" in listing and "while loading the model" in listing
