"""Run files that lie or break: pid reuse, a held lock, corrupt status/events, a full disk
while writing status.json, durations. Real processes and files, no training (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.disk_faults import fill, mounted_tmpfs
from tuneplan.durations import format_duration, parse_duration
from tuneplan.errors import UserError
from tuneplan.events import (
    Status, StatusUnreadable, effective_phase, load_status, read_status, write_status,
)
from tuneplan.run_process import RunLocked, acquire_lock, lock_is_held, process_record
from tuneplan.services import runs

ROOT = Path(__file__).resolve().parents[2]


def _run_folder(root: Path, name: str, status: Status | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    if status is not None:
        write_status(run, status)
    return run


def test_a_reused_pid_is_not_the_run(tmp_path):
    """A live process whose pid the run recorded, but which started later (pid reuse, reboot)
    or runs another command, is not the run's: the run is crashed and stop refuses."""
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        real = process_record(sleeper.pid)
        assert real is not None and real["cmdline"] == ["sleep", "600"]
        reused = dict(real, start_time=real["start_time"] - 3600)  # "the run's process" started an hour before
        other_cmd = dict(real, cmdline=[sys.executable, "-m", "tuneplan.training.runner", "x"])
        for records in ([], [reused], [other_cmd]):
            run = _run_folder(tmp_path, f"r{len(list(tmp_path.iterdir()))}",
                              Status(phase="training", pids=[sleeper.pid], processes=records))
            assert effective_phase(read_status(run)) == "crashed"
            with pytest.raises(UserError, match="not running"):
                runs.request_stop(run)
        assert sleeper.poll() is None  # never signalled
        run = _run_folder(tmp_path, "ours", Status(phase="training", pids=[sleeper.pid], processes=[real]))
        assert effective_phase(read_status(run)) == "training"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_run_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    run = _run_folder(tmp_path, "r")
    assert lock_is_held(run) is None  # no lock file yet
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tuneplan.run_process import acquire_lock; acquire_lock(sys.argv[1]); "
        "print('held', flush=True); time.sleep(600)"), str(run)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_is_held(run) is True
        t0 = time.monotonic()
        with pytest.raises(RunLocked):
            acquire_lock(run, wait=0.2)
        assert time.monotonic() - t0 < 5
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
        assert lock_is_held(run) is False
        fd = acquire_lock(run)
        os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()


CORRUPTIONS = {
    "not-utf8": lambda run: (run / "status.json").write_bytes(b'{"phase": "tr\xff\xfeaining"}'),
    "a-list": lambda run: (run / "status.json").write_text('["training", 3]'),
    "step-text": lambda run: (run / "status.json").write_text('{"phase": "training", "step": "three"}'),
    "pids-text": lambda run: (run / "status.json").write_text('{"phase": "training", "pids": "123"}'),
    "bad-phase": lambda run: (run / "status.json").write_text('{"phase": 7}'),
    "truncated": lambda run: (run / "status.json").write_text('{"phase": "tra'),
}


def test_corrupt_runs_are_listed_as_unreadable_and_the_rest_still_show(tmp_path):
    root = tmp_path / "runs"
    good = _run_folder(root, "a-good", Status(phase="done", step=5, max_steps=5, loss=1.25))
    (good / "events.jsonl").write_text(json.dumps({"kind": "log", "time": 1.0, "loss": 2.5}) + "\n")
    for name, corrupt in CORRUPTIONS.items():
        corrupt(_run_folder(root, name))
    # events that are not UTF-8 next to a fine status: listed normally (the bad lines skipped)
    bad_events = _run_folder(root, "z-events", Status(phase="stopped", step=2, max_steps=5))
    (bad_events / "events.jsonl").write_bytes(b'{"kind": "log", "loss": \xff}\n\x80\x81\n')

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNEPLAN_RUNS_DIR": str(root)}
    out = subprocess.run([sys.executable, "-m", "tuneplan", "runs"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("a-good") and "done" in line and "2.500 -> 1.250" in line for line in lines)
    assert any(line.startswith("z-events") and "stopped" in line for line in lines)
    for name in CORRUPTIONS:
        row = next(line for line in lines if line.startswith(name + " "))
        assert "unreadable" in row
        reason = next(line for line in lines if line.startswith(f"{name}: "))
        assert "status.json" in reason
    assert "not UTF-8" in out.stdout and "JSON list" in out.stdout and "field step" in out.stdout
    js = subprocess.run([sys.executable, "-m", "tuneplan", "runs", "--json"], capture_output=True, text=True,
                        env=env, timeout=60)
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert {r["name"]: r["phase"] for r in rows}["a-list"] == "unreadable" and len(rows) == len(CORRUPTIONS) + 2

    # attach on an unreadable run: one line, exit 2, at once (no dashboard stuck at "loading...")
    for name in ("not-utf8", "a-list"):
        t0 = time.monotonic()
        att = subprocess.run([sys.executable, "-m", "tuneplan", "attach", name], capture_output=True, text=True,
                             env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert att.returncode == 2 and time.monotonic() - t0 < 30
        err = att.stderr.strip().splitlines()
        assert len(err) == 1 and "unreadable" in err[0] and "Traceback" not in att.stderr
        # stop and resume say the same in one line
        for cmd in ("stop", "resume"):
            ctl = subprocess.run([sys.executable, "-m", "tuneplan", cmd, name], capture_output=True, text=True,
                                 env=env, timeout=60)
            assert ctl.returncode == 2 and len(ctl.stderr.strip().splitlines()) == 1, ctl.stderr
    # the dashboard's follower reads the bad-events run without raising
    from tuneplan.ui.run_view import RunFollower

    follower = RunFollower(bad_events)
    follower.poll()
    assert follower.snapshot().phase == "stopped"


def test_load_status_names_the_problem(tmp_path):
    for name, corrupt in CORRUPTIONS.items():
        run = _run_folder(tmp_path, name)
        corrupt(run)
        with pytest.raises(StatusUnreadable):
            load_status(run)
        assert read_status(run) is None


@pytest.fixture
def tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path, "1m") as mnt:
        yield mnt


def test_status_write_on_a_full_disk_records_the_error_and_leaves_no_temp_file(tmpfs):
    run = _run_folder(tmpfs, "r", Status(phase="training", step=3, log_tail=["x" * 200] * 5))
    fill(tmpfs)
    status = read_status(run)
    status.phase, status.error = "failed", "ENOSPC (No space left on device) at step 4"
    write_status(run, status)  # the temp file cannot be written: the status is overwritten in place
    again = load_status(run)
    assert again.phase == "failed" and again.error.startswith("ENOSPC")
    assert not list(run.glob(".status.json.*.tmp"))


def test_durations_have_one_parser():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400 and parse_duration("2d") == 172800
    assert format_duration(parse_duration("1h30m")) == "1h30m"
    for bad in ("30", "", "m", "-5m", "0s", "1e400h", "30 minutes", "1h 30x"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneplan", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_negative_debug_sleep_is_refused_at_load(tmp_path):
    from tuneplan.config import ConfigError, RunConfig, config_to_dict, load_config

    data = config_to_dict(RunConfig())
    data["model"]["source"], data["data"]["source"] = str(tmp_path), str(tmp_path / "d.jsonl")
    import tomli_w

    for key in ("step_sleep_seconds", "save_sleep_seconds"):
        bad = tmp_path / f"{key}.toml"
        bad.write_text(tomli_w.dumps({**data, "debug": {key: -1}}))
        with pytest.raises(ConfigError, match=f"debug.{key} must be >= 0"):
            load_config(bad)
        out = _cli("train", "--config", str(bad), "--runs-dir", str(tmp_path / "runs"))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and f"debug.{key}" in lines[0], out.stderr
        assert not (tmp_path / "runs").exists()


def test_export_of_a_failed_full_run_says_there_is_no_model(tmp_path):
    from dataclasses import replace

    from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config

    config = RunConfig(model=ModelConfig(source=str(tmp_path)), data=DataConfig(source=str(tmp_path / "d.jsonl")))
    run = _run_folder(tmp_path / "runs", "fullrun", Status(phase="failed", error="at step 3: boom"))
    save_config(replace(config, setup=replace(config.setup, method="full")), run / "config.toml", overwrite=True)
    out = _cli("export", "fullrun", "--merge", env={"TUNEPLAN_RUNS_DIR": str(tmp_path / "runs")})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "saved no model/ folder (failed)" in lines[0] and "already a merged model" not in lines[0]


def test_a_second_supervisor_on_a_locked_run_leaves_it_alone(tmp_path):
    """A supervisor started by hand while the run's trainer holds the lock exits at once and
    changes nothing in the run folder."""
    run = _run_folder(tmp_path, "r", Status(phase="training", step=7))
    before = (run / "status.json").read_bytes()
    fd = acquire_lock(run)  # the live trainer
    try:
        out = subprocess.run([sys.executable, "-m", "tuneplan.training.runner", str(run)], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(fd)
    assert out.returncode == 3 and "already being trained by another process" in out.stdout, out.stdout + out.stderr
    assert (run / "status.json").read_bytes() == before and not (run / "events.jsonl").exists()


def test_a_run_left_queued_with_no_process_can_be_resumed(tmp_path):
    """Queued with nobody behind it (its starter was killed between the two steps): resume
    takes it (no 'still queued' dead end); here it has no checkpoint, which resume says."""
    from tuneplan.services import launcher

    run = _run_folder(tmp_path, "q", Status(phase="queued"))
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        launcher.resume(run)
    assert lock_is_held(run) is False  # the refused resume let go of the lock


def test_a_run_whose_lock_nobody_holds_is_listed_as_crashed(tmp_path):
    """Processes that match their records are not enough for `tuneplan runs`: the run's lock
    must be held too (the trainer holds it for its whole life)."""
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        run = _run_folder(tmp_path, "r", Status(phase="training", pids=[sleeper.pid],
                                                processes=[process_record(sleeper.pid, armed=True)]))
        fd = acquire_lock(run)
        assert runs.summarize(run).phase == "training"
        os.close(fd)  # the lock is free now
        assert runs.summarize(run).phase == "crashed"
        with pytest.raises(UserError, match="not running"):
            runs.request_stop(run)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# --- issue 19, items 2 and 7: run files that are not files, or links, or huge --------------------

DONE = ROOT / "tests" / "data" / "runs" / "tiny-done"


def _tuneplan_in(runs_root: Path, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """A real `tuneplan` process; a hang is a failure (timeout), not a stuck suite."""
    env = {**os.environ, "TUNEPLAN_RUNS_DIR": str(runs_root), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tuneplan", *argv]
    if argv[-1] == "--peak-rss":  # run it under a fresh parent whose only child it is, and print its peak
        # RSS (this test process's RUSAGE_CHILDREN also counts earlier children, e.g. training runs)
        command = [sys.executable, "-c", _PEAK_RSS, *command[:-1]]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


_PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
             "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
             "sys.exit(rc)")


@pytest.mark.parametrize("bad", ["fifo", "dev-zero"])
@pytest.mark.parametrize("name", ["status.json", "config.toml", "events.jsonl"])
def test_a_run_file_that_is_a_fifo_or_dev_zero_never_hangs_a_command(tmp_path, name, bad, capsys, monkeypatch,
                                                                     no_hang):
    import shutil

    from tuneplan.cli import main

    root = tmp_path / "runs"
    run = root / "r"
    shutil.copytree(DONE, run)
    (run / name).unlink()
    if bad == "fifo":
        os.mkfifo(run / name)
    else:
        (run / name).symlink_to("/dev/zero")
    monkeypatch.setenv("TUNEPLAN_RUNS_DIR", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["runs"]) == 0 and "r " in capsys.readouterr().out
    for argv in (["stop", "r"], ["save", "r"], ["resume", "r"], ["export", "r", "--format", "safetensors"],
                 ["push", "r", "--repo", "me/x"]):
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)


def test_runs_reads_only_the_ends_of_a_2_gib_sparse_events_file(tmp_path):
    import shutil

    root = tmp_path / "runs"
    run = root / "r"
    shutil.copytree(DONE, run)
    with open(run / "events.jsonl", "r+b") as f:
        f.truncate(2 << 30)  # a 2 GiB hole after the real events: no newline in it
    start = time.monotonic()
    out = _tuneplan_in(root, "runs", "--peak-rss")
    took = time.monotonic() - start
    assert out.returncode == 0 and "r " in out.stdout and "6.160 -> " in out.stdout, out.stdout + out.stderr
    peak_kib = int(out.stderr.rsplit("peak-rss-kib ", 1)[1])  # of that process alone (Linux: KiB)
    assert peak_kib < 400 * 1024, peak_kib  # the file is 2 GiB: it was not read
    assert took < 20, took


def test_run_files_are_never_written_through_a_symlink(tmp_path):
    """`resume` appends to events.jsonl and train.log: a link planted there (to a file of the
    user's elsewhere) is refused, and the target is not touched."""
    from tuneplan.events import MessageEvent, append_event
    from tuneplan.files import FileRefused

    run = _run_folder(tmp_path, "r", Status(phase="stopped"))
    elsewhere = tmp_path / "bashrc"
    elsewhere.write_text("export PATH=...\n")
    (run / "events.jsonl").symlink_to(elsewhere)
    with pytest.raises(FileRefused, match="symlink"):
        append_event(run, MessageEvent(text="x"))
    assert elsewhere.read_text() == "export PATH=...\n"
    (run / "status.json").unlink()
    (run / "status.json").symlink_to(elsewhere)
    with pytest.raises(StatusUnreadable, match="symlink"):
        load_status(run)
