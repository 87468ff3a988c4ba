"""Pure parts of run handling: OOM re-plan order, crashed detection, runs root, run folders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from planner.setup import TrainSetup
from tuneplan.errors import UserError
from tuneplan.events import Status, effective_phase, write_status
from tuneplan.services import paths, runs
from tuneplan.training.recovery import replan_after_oom


def test_oom_replan_order_keeps_the_effective_batch():
    setup = TrainSetup(method="lora", micro_batch=6, grad_accum=2, grad_checkpointing=False)
    seen = []
    while (step := replan_after_oom(setup, allow_qlora=True)) is not None:
        setup, changes = step
        seen.append(changes)
        assert setup.effective_batch() == 12
    assert seen == [
        {"micro_batch": [6, 3], "grad_accum": [2, 4]},
        {"micro_batch": [3, 1], "grad_accum": [4, 12]},
        {"grad_checkpointing": [False, True]},
        {"method": ["lora", "qlora"]},
    ]
    last = TrainSetup(method="lora", micro_batch=1, grad_checkpointing=True)
    assert replan_after_oom(last, allow_qlora=False) is None


def test_dead_pid_without_final_status_is_crashed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_status(tmp_path, Status(phase="training", pids=[proc.pid]))
    from tuneplan.events import read_status

    assert effective_phase(read_status(tmp_path)) == "crashed"
    write_status(tmp_path, Status(phase="stopped", pids=[proc.pid]))
    assert effective_phase(read_status(tmp_path)) == "stopped"
    import os

    from tuneplan.run_process import process_record

    write_status(tmp_path, Status(phase="training", pids=[os.getpid()], processes=[process_record(os.getpid())]))
    assert effective_phase(read_status(tmp_path)) == "training"
    # the same live pid without the record of its start: not known to be ours
    write_status(tmp_path, Status(phase="training", pids=[os.getpid()]))
    assert effective_phase(read_status(tmp_path)) == "crashed"


def test_runs_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.RUNS_DIR_ENV, str(tmp_path / "env"))
    assert paths.runs_root(tmp_path / "flag") == tmp_path / "flag"
    assert paths.runs_root() == tmp_path / "env"
    monkeypatch.delenv(paths.RUNS_DIR_ENV)
    assert paths.runs_root().parts[-2:] == ("tuneplan", "runs")


def test_run_folders_are_never_reused(tmp_path):
    a = paths.new_run_dir(tmp_path, None, model="org/Llama-3.1-8B", method="qlora")
    b = paths.new_run_dir(tmp_path, None, model="org/Llama-3.1-8B", method="qlora")
    assert a != b and a.name.startswith("llama-3.1-8b-qlora-")
    paths.new_run_dir(tmp_path, "mine", model="m", method="lora")
    with pytest.raises(UserError, match="already exists"):
        paths.new_run_dir(tmp_path, "mine", model="m", method="lora")


def test_controls_refuse_a_run_that_is_not_running(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text("")
    write_status(run, Status(phase="done"))
    with pytest.raises(UserError, match="not running"):
        runs.request_stop(run)
    with pytest.raises(UserError, match="not running"):
        runs.request_save(run)
    with pytest.raises(UserError, match="already finished"):
        runs.prepare_resume(run)
    with pytest.raises(UserError, match="no run named 'nope'"):
        runs.find_run("nope", tmp_path)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "sp ace"])
def test_run_names_stay_inside_the_runs_root(tmp_path, name):
    with pytest.raises(UserError, match="may contain only"):
        paths.new_run_dir(tmp_path, name, model="m", method="lora")


# --- issue 19, item 1: stop signals only the run's own trainer -----------------------------------

def _forged_run(tmp_path, pid: int, *, record: dict | None = None):
    """A run folder whose status.json names `pid` as its armed trainer, with the real start
    time and command line a forger reads from /proc."""
    from tuneplan.run_process import process_record

    run = tmp_path / "forged"
    run.mkdir(exist_ok=True)
    (run / "config.toml").write_text("")
    record = record if record is not None else dict(process_record(pid), armed=True)
    write_status(run, Status(phase="training", pids=[pid], processes=[record]))
    return run


@pytest.fixture
def stranger():
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_stop_never_signals_a_live_stranger_of_a_run_without_a_lock(tmp_path, stranger):
    run = _forged_run(tmp_path, stranger.pid)
    assert not (run / "run.lock").exists()
    with pytest.raises(UserError, match="not running"):
        runs.request_stop(run)
    assert stranger.poll() is None and not (run / "stop.request").exists()


def test_stop_never_signals_a_stranger_while_someone_else_holds_the_lock(tmp_path, stranger):
    """The lock is held (here by this test process), but the recorded process does not hold the
    lock file open: it is not the run's trainer."""
    from tuneplan.run_process import acquire_lock, holds_run_lock

    run = _forged_run(tmp_path, stranger.pid)
    fd = acquire_lock(run)
    try:
        assert not holds_run_lock(stranger.pid, run)
        assert holds_run_lock(os.getpid(), run)  # this process holds it: the proof works
        with pytest.raises(UserError, match="not running"):
            runs.request_stop(run)
        assert stranger.poll() is None
    finally:
        os.close(fd)


def test_stop_signals_the_process_that_holds_the_lock(tmp_path):
    """The positive case on a real child that inherited the locked fd, as the supervisor does."""
    from tuneplan.run_process import acquire_lock

    run = tmp_path / "mine"
    run.mkdir()
    fd = acquire_lock(run)
    child = subprocess.Popen(["sleep", "600"], pass_fds=(fd,))
    os.close(fd)
    try:
        _forged_run(tmp_path, child.pid)  # writes `forged`; use our own folder instead
        from tuneplan.run_process import process_record

        write_status(run, Status(phase="training", pids=[child.pid],
                                 processes=[dict(process_record(child.pid), armed=True)]))
        assert runs.request_stop(run) == [child.pid]
        assert child.wait(10) == -15
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("pid", [-1, 0])
def test_a_pid_of_minus_one_or_zero_is_nobody(tmp_path, pid):
    run = _forged_run(tmp_path, pid, record={"pid": pid, "start_time": 0.0, "cmdline": ["x"], "armed": True})
    assert effective_phase(runs.read_status(run)) == "crashed"
    with pytest.raises(UserError, match="not running"):
        runs.request_stop(run)
    with pytest.raises(UserError, match="not running"):
        runs.request_save(run)
    with pytest.raises(UserError, match="no checkpoint"):
        runs.prepare_resume(run)
