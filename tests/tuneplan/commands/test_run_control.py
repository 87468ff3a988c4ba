"""Run control under faults, end to end: real detached runs of the tiny model on the CPU,
real signals (kill -9 mid-save), real pid-reuse, two real concurrent resumes, a real full,
read-only or size-limited disk (tmpfs, remount, RLIMIT_FSIZE)."""

from __future__ import annotations

import json
import os
import resource
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.disk_faults import fill, mounted_tmpfs
from tiny_runs import ROOT, cli_env, tiny_config, tuneplan, wait_final, wait_for, write_config
from tuneplan.config import load_config, save_config
from tuneplan.events import Status, effective_phase, last_checkpoint, read_events, read_status, write_status
from tuneplan.run_process import process_record



# --- helpers ------------------------------------------------------------------------------------

def _one_line_error(out: subprocess.CompletedProcess, code: int = 2) -> str:
    assert out.returncode == code, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"tuneplan( [a-z]+)?: error: ", lines[0]) and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def _log_steps_since_last_resume(run_dir: Path) -> list[int]:
    events = list(read_events(run_dir))
    starts = [i for i, e in enumerate(events) if e.kind == "phase" and e.phase == "queued"]
    return [e.step for e in events[starts[-1]:] if e.kind == "log"]


def _set_debug(run_dir: Path, **debug) -> None:
    config = load_config(run_dir / "config.toml")
    save_config(replace(config, debug=replace(config.debug, **debug)), run_dir / "config.toml", overwrite=True)


def _crashed_copy(trained_lora_run, runs_root: Path, name: str, *, pid: int, record: dict | None) -> Path:
    """A copy of a finished 24-step run whose last checkpoint is step 12, made to look like a
    run that was training with process `pid` (recorded as `record`) when the machine died."""
    src, _ = trained_lora_run
    run = runs_root / name
    shutil.copytree(src, run)
    shutil.rmtree(run / "checkpoints" / "checkpoint-24")
    shutil.rmtree(run / "adapter")
    status = read_status(run)
    status.phase, status.step, status.pids, status.processes = "training", 17, [pid], [record] if record else []
    write_status(run, status)
    return run


def _crashed_copy_of_a_dead_trainer(trained_lora_run, runs_root: Path, name: str) -> Path:
    """`_crashed_copy` whose trainer was a real process, recorded while it lived, now gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    record = process_record(dead.pid)
    dead.wait()
    return _crashed_copy(trained_lora_run, runs_root, name, pid=dead.pid, record=record)


def _train(runs_root: Path, config_path: Path, name: str) -> Path:
    """`tuneplan train --config` as a real detached run named `name`; its folder."""
    assert tuneplan(runs_root, "train", "--config", str(config_path), "--name", name).returncode == 0
    return runs_root / name


def _kill_9_once_written(run: Path, written: Path, what: str) -> None:
    """kill -9 the whole run as soon as `written` exists (a save in progress); it reads `crashed`."""
    wait_for(written.exists, 120, what)
    _sid_kill(run)
    wait_for(lambda: effective_phase(read_status(run)) == "crashed", 30, "crashed")


def _sid_kill(run_dir: Path) -> None:
    """kill -9 the whole run (supervisor and worker share the supervisor's session)."""
    os.killpg(read_status(run_dir).pids[0], signal.SIGKILL)


@pytest.fixture
def tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path, "80m") as mnt:
        yield mnt


def _resume_to_done(runs_root: Path, run_dir: Path, max_steps: int, *, env: dict | None = None) -> list[int]:
    """Resume; the run ends `done` at exactly max_steps, each step after the checkpoint trained once."""
    ckpt = last_checkpoint(run_dir)
    out = tuneplan(runs_root, "resume", run_dir.name, **(env or {}))
    assert out.returncode == 0, out.stdout + out.stderr
    status = wait_final(run_dir)
    assert status.phase == "done" and status.step == max_steps and status.max_steps == max_steps, status
    steps = _log_steps_since_last_resume(run_dir)
    first = int(ckpt.name.rsplit("-", 1)[1]) + 1
    every = load_config(run_dir / "config.toml").training.logging_steps
    assert steps == [s for s in range(first, max_steps + 1) if s % every == 0], steps
    return steps


# --- stop never hits a stranger; resume after a "reboot" ----------------------------------------

@pytest.mark.slow
def test_stop_never_signals_a_reused_pid_and_resume_picks_the_newest_complete_checkpoint(trained_lora_run, runs_root):
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        # what the run recorded before the machine restarted: its runner, started long ago, whose
        # pid an unrelated `sleep` now has
        before = dict(process_record(sleeper.pid), start_time=process_record(sleeper.pid)["start_time"] - 7200,
                      cmdline=[sys.executable, "-m", "tuneplan.training.runner", "x"], armed=True)
        reused = _crashed_copy(trained_lora_run, runs_root, "reused", pid=sleeper.pid, record=before)
        bare = _crashed_copy(trained_lora_run, runs_root, "bare", pid=sleeper.pid, record=None)  # pid only, no process record: an older run
        listing = tuneplan(runs_root, "runs").stdout
        for run in (reused, bare):
            assert any(line.startswith(run.name) and "crashed" in line for line in listing.splitlines()), listing
            assert "not running (crashed)" in _one_line_error(tuneplan(runs_root, "stop", run.name))
        assert sleeper.poll() is None  # the unrelated process was never signalled
        # a half checkpoint newer than the last complete one is never picked
        half = reused / "checkpoints" / "checkpoint-20"
        half.mkdir()
        (half / "adapter_model.safetensors").write_bytes(b"half")
        assert last_checkpoint(reused).name == "checkpoint-12"
        _resume_to_done(runs_root, reused, 24)
    finally:
        sleeper.kill()
        sleeper.wait()


# --- one run, one trainer --------------------------------------------------------------------------

@pytest.mark.slow
def test_two_concurrent_resumes_start_one_trainer(trained_lora_run, runs_root):
    run = _crashed_copy_of_a_dead_trainer(trained_lora_run, runs_root, "twin")
    _set_debug(run, step_sleep_seconds=0.2)
    procs = [subprocess.Popen([sys.executable, "-m", "tuneplan", "resume", "twin"], env=cli_env(runs_root), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(120), *p.communicate()) for p in procs]
    started = [o for o in outs if o[0] == 0]
    refused = [o for o in outs if o[0] != 0]
    assert len(started) == 1 and len(refused) == 1, outs
    assert "resumed twin from checkpoint-12" in started[0][1]
    rc, _, err = refused[0]
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "already being trained" in lines[0], err
    status = wait_final(run)
    assert status.phase == "done" and status.step == 24
    steps = _log_steps_since_last_resume(run)
    assert steps == list(range(14, 25, 2)), steps  # one trainer: no step twice, none backwards
    resumed = [e for e in read_events(run) if e.kind == "phase" and e.phase == "training"
               and "resumed at step 12" in (e.message or "")]
    assert len(resumed) == 1  # one trainer started


# --- queued with nobody behind it ------------------------------------------------------------------

@pytest.mark.slow
def test_a_resume_that_cannot_start_leaves_the_run_failed_with_the_reason(trained_lora_run, runs_root):
    run = _crashed_copy_of_a_dead_trainer(trained_lora_run, runs_root, "nolog")
    (run / "train.log").unlink(missing_ok=True)
    (run / "train.log").mkdir()  # train.log cannot be opened for writing (works as root too)
    line = _one_line_error(tuneplan(runs_root, "resume", "nolog"))
    assert "failed to start" in line and "train.log" in line
    status = read_status(run)
    assert status.phase == "failed" and "could not start the training process" in status.error and not status.pids
    assert "failed" in tuneplan(runs_root, "runs").stdout
    (run / "train.log").rmdir()
    _resume_to_done(runs_root, run, 24)


# --- stop right after train; bad --timeout; the no-checkpoint warning ---------------------------------

@pytest.mark.slow
def test_stop_right_after_train_is_stopped_not_crashed(tiny_model, runs_root, tmp_path):
    from tuneplan.services import launcher, runs

    config = tiny_config(tiny_model, training={"max_steps": 40, "save_steps": 100}, debug={"step_sleep_seconds": 0.1})
    run = launcher.prepare_run(config, runs_root)
    proc = launcher.start_process(run)
    runs.request_stop(run)  # microseconds after the start: no handler is installed yet anywhere
    status = launcher.wait_for_phase(run, ("stopped", "failed", "crashed", "done"), 120)
    proc.wait(30)
    assert status.phase == "stopped" and not status.error, status

    # the CLI: a warning at launch (no checkpoint before the end), then stop at once
    cfg = write_config(tmp_path, replace(config, name=None))
    out = tuneplan(runs_root, "train", "--config", str(cfg), "--name", "quick")
    assert out.returncode == 0 and "warning: no checkpoint before the end" in out.stderr, out.stderr
    stopped = tuneplan(runs_root, "stop", "quick", "--wait", "--timeout", "120")
    assert stopped.returncode == 0 and "quick: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert "--timeout" in _one_line_error(tuneplan(runs_root, "stop", "quick", "--wait", "--timeout", "-1"))


# --- spot-safe checkpoints -------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_during_a_checkpoint_save_then_resume_continues_exactly(tiny_model, runs_root, tmp_path):
    run = _train(runs_root, write_config(tmp_path, tiny_config(
        tiny_model, training={"max_steps": 12, "save_steps": 4, "logging_steps": 1},
        debug={"save_sleep_seconds": 2.0})), "spot")
    ckpts = run / "checkpoints"
    wait_for(lambda: (ckpts / "checkpoint-4" / "trainer_state.json").exists(), 120, "checkpoint-4")
    # checkpoint-8 fully written but not yet published: the worst moment to die
    _kill_9_once_written(run, ckpts / ".partial" / "checkpoint-8" / "trainer_state.json", "the save of step 8")
    assert not (ckpts / "checkpoint-8").exists() and last_checkpoint(run).name == "checkpoint-4"
    listing = tuneplan(runs_root, "runs").stdout.splitlines()
    assert any(line.startswith("spot") and "crashed" in line for line in listing)
    _set_debug(run, save_sleep_seconds=0.0)
    _resume_to_done(runs_root, run, 12)
    assert not (ckpts / ".partial").exists()  # the half save was cleaned up
    state = json.loads((last_checkpoint(run) / "trainer_state.json").read_text())
    assert state["global_step"] == 12


@pytest.mark.slow
def test_killed_during_the_final_save_resumes_without_an_extra_step(tiny_model, runs_root, tmp_path):
    run = _train(runs_root, write_config(tmp_path, tiny_config(
        tiny_model, training={"max_steps": 4, "save_steps": 2, "logging_steps": 1},
        debug={"save_sleep_seconds": 1.5})), "last")
    _kill_9_once_written(run, run / ".adapter.partial" / "README.md", "the final save")
    assert not (run / "adapter").exists()
    _set_debug(run, save_sleep_seconds=0.0)
    out = tuneplan(runs_root, "resume", "last")
    assert out.returncode == 0, out.stderr
    status = wait_final(run)
    assert status.phase == "done" and status.step == 4 and status.max_steps == 4, status  # not 5/4
    assert _log_steps_since_last_resume(run) == []  # nothing trained again
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and not (run / ".adapter.partial").exists()
    # the adapter saved after the resume holds the end checkpoint's weights, not the untrained ones
    from safetensors.torch import load_file

    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    trained = load_file(last_checkpoint(run) / "adapter_model.safetensors")
    assert saved.keys() == trained.keys() and all((saved[k] == trained[k]).all() for k in saved)
    assert any((trained[k] != 0).any() for k in trained if "lora_B" in k)


@pytest.mark.slow
def test_save_every_adds_time_based_checkpoints(tiny_model, runs_root, tmp_path):
    config = write_config(tmp_path, tiny_config(tiny_model, debug={"step_sleep_seconds": 0.4},
                                          training={"max_steps": 10, "save_steps": 1000, "logging_steps": 1}))
    out = tuneplan(runs_root, "train", "--config", str(config), "--name", "timed", "--save-every", "1s", "--foreground")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning: no checkpoint" not in out.stderr  # a time-based schedule is a mid-run checkpoint
    events = list(read_events(runs_root / "timed"))
    saved = [e.step for e in events if e.kind == "checkpoint"]
    timed = [e for e in events if e.kind == "message" and "time-based checkpoint" in e.text]
    assert len(timed) >= 2 and any(s < 10 for s in saved), saved
    assert load_config(runs_root / "timed" / "config.toml").training.save_every == "1s"
    bad = tuneplan(runs_root, "train", "--config", str(config), "--save-every", "30")  # no unit
    assert "--save-every" in _one_line_error(bad)


@pytest.mark.slow
def test_oom_during_evaluation_lowers_the_eval_batch_not_the_training_batch(tiny_model, runs_root, tmp_path):
    config = write_config(tmp_path, tiny_config(tiny_model, setup={"micro_batch": 4, "grad_accum": 1},
                                          training={"max_steps": 4, "save_steps": 2, "eval_steps": 2},
                                          debug={"oom_eval_batch_above": 2}))
    out = tuneplan(runs_root, "train", "--config", str(config), "--name", "evaloom", "--foreground")
    assert out.returncode == 0, out.stdout + out.stderr
    run = runs_root / "evaloom"
    status = read_status(run)
    assert status.phase == "done" and status.step == 4 and status.attempt == 1
    (replan,) = [e for e in read_events(run) if e.kind == "replan"]
    assert replan.changes == {"eval_batch": [4, 2]} and "while evaluating" in replan.reason
    config = load_config(run / "config.toml")
    assert (config.setup.micro_batch, config.setup.grad_accum, config.training.eval_batch) == (4, 1, 2)


# --- disk faults -----------------------------------------------------------------------------------

def _spot_config(tiny_model, tmp_path) -> Path:
    return write_config(tmp_path, tiny_config(tiny_model, training={"max_steps": 12, "save_steps": 4, "logging_steps": 1},
                                        debug={"step_sleep_seconds": 0.2}))


@pytest.mark.slow
def test_full_disk_mid_run_fails_with_enospc_and_keeps_the_last_checkpoint(tiny_model, tmpfs, tmp_path):
    root = tmpfs / "runs"
    config = _spot_config(tiny_model, tmp_path)
    assert tuneplan(root, "train", "--config", str(config), "--name", "full").returncode == 0
    run = root / "full"
    wait_for(lambda: (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists(), 120, "checkpoint-4")
    filler = fill(tmpfs)
    status = wait_final(run)
    assert status.phase == "failed" and "ENOSPC" in status.error, status
    kept = last_checkpoint(run)
    assert kept is not None and kept.name in status.error
    assert not (run / "checkpoints" / ".partial").exists() and not list(run.glob(".status.json.*.tmp"))
    listing = tuneplan(root, "runs").stdout
    assert "ENOSPC" in listing
    filler.unlink()
    _resume_to_done(root, run, 12)
    for line in (run / "events.jsonl").read_bytes().splitlines():  # no half line glued to the next event
        json.loads(line)


@pytest.mark.slow
def test_read_only_run_folder_names_erofs_and_resume_says_so_in_one_line(tiny_model, runs_root, tmp_path):
    root = runs_root
    assert tuneplan(root, "train", "--config", str(_spot_config(tiny_model, tmp_path)), "--name", "ro").returncode == 0
    run = root / "ro"
    wait_for(lambda: (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists(), 120, "checkpoint-4")
    # the run folder becomes a read-only file system under the running trainer (a read-only bind
    # mount of itself: remounting the whole file system is refused while files are open)
    if subprocess.run(["mount", "--bind", str(run), str(run)], capture_output=True).returncode:
        pytest.skip("bind mounts need root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], check=True)
        wait_for(lambda: effective_phase(read_status(run)) in ("crashed", "failed"), 120, "the run to end")
        listing = tuneplan(root, "runs").stdout
        assert "EROFS" in listing, listing
        assert "EROFS" in _one_line_error(tuneplan(root, "resume", "ro"))
    finally:
        subprocess.run(["umount", "-l", str(run)], check=True)
    _resume_to_done(root, run, 12)


@pytest.mark.slow
def test_file_size_limit_is_refused_at_launch_and_recorded_by_the_supervisor_mid_run(tiny_model, runs_root, tmp_path):
    from tuneplan.services import launcher

    config = tiny_config(tiny_model, training={"max_steps": 12, "save_steps": 4, "logging_steps": 1},
                         debug={"step_sleep_seconds": 0.2})
    path = write_config(tmp_path, config)
    n = launcher._trainable_params(config, launcher.model_config_dict(str(tiny_model)))
    limit = launcher.largest_checkpoint_file_bytes(n) // 2
    # `ulimit -f` below a checkpoint file: refused before anything is written
    wrapper = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               f"os.execv(sys.executable, [sys.executable, '-m', 'tuneplan', 'train', '--config', {str(path)!r}])")
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=cli_env(runs_root),
                         cwd=ROOT, timeout=120)
    assert "ulimit -f" in _one_line_error(out) and not list(runs_root.iterdir())

    # the limit drops on the running worker (a real EFBIG on its next write): the worker cannot
    # write status.json any more, the supervisor records the error it sent
    assert tuneplan(runs_root, "train", "--config", str(path), "--name", "fsize").returncode == 0
    run = runs_root / "fsize"
    wait_for(lambda: (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists(), 120, "checkpoint-4")
    # past the checkpoint's own writes, so the step the worker reports is a later one
    wait_for(lambda: (read_status(run) or Status()).step >= 5, 120, "step 5")
    worker = read_status(run).pids[-1]
    resource.prlimit(worker, resource.RLIMIT_FSIZE, (1024, 1024))
    status = wait_final(run)
    assert status.phase == "failed" and "EFBIG" in status.error and "ulimit -f" in status.error, status
    assert status.pids == [read_status(run).pids[0]] and worker not in status.pids  # written by the supervisor
    assert status.step > 4  # the step the worker reached, sent with its error
    assert last_checkpoint(run).name in status.error
    assert not (run / "checkpoints" / ".partial").exists() and not list(run.glob(".status.json.*.tmp"))
    _resume_to_done(runs_root, run, 12)


@pytest.mark.slow
def test_demo_with_two_steps_trains_to_done_and_exits_0(tmp_path):
    env = {**os.environ, "TUNEPLAN_CACHE_DIR": str(tmp_path / "cache"), "TUNEPLAN_PRESETS_DIR": str(tmp_path / "p"),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "tuneplan", "demo", "--no-dashboard", "--runs-dir",
                          str(tmp_path / "runs"), "--max-steps", "2"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "done in" in out.stdout and "over 2 steps" in out.stdout
