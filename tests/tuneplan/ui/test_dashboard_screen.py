"""The dashboard: replays a recorded run, follows a growing one, shows a crash, keys."""

from __future__ import annotations

import json
import os

import pytest

from textual.widgets import Static

from tuneplan import events as ev
from tuneplan.ui.app import create_app
from tuneplan.ui.messages import RunUpdated
from tuneplan.ui.screens.dashboard_screen import DashboardScreen
from tuneplan.ui.widgets.dialogs import ConfirmDialog, HelpDialog

from ui_helpers import FakeNVML, make_services, rtx_4090, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="function")


def text_of(screen, selector) -> str:
    return str(screen.query_one(selector, Static).render())


def _recorded(name):
    from ui_helpers import RUNS

    events = list(ev.read_events(RUNS / name))
    logs = [e for e in events if e.kind == "log"]
    return events, logs


async def test_replays_a_finished_run(tmp_path, recorded_run):
    run_dir = recorded_run("tiny-done")
    events, logs = _recorded("tiny-done")
    saved = [e for e in events if e.kind == "checkpoint"]
    assert len(saved) > 1
    (run_dir / "checkpoints" / f"checkpoint-{saved[-1].step}").mkdir(parents=True)  # older ones: deleted
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])), run_dir=run_dir)
    seen: list[RunUpdated] = []
    async with app.run_test(size=(80, 24), message_hook=lambda m: seen.append(m) if isinstance(m, RunUpdated) else None) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await wait_for(pilot, lambda: screen.snapshot is not None and screen.gpu_sample is not None)
        s = screen.snapshot
        last = logs[-1]
        assert s.phase == "done" and s.step == last.step and s.max_steps == last.max_steps
        assert len(s.loss_series[0]) == len(logs)
        assert s.loss_series[1][-1] < s.loss_series[1][0]  # the recorded loss fell
        assert len(s.eval_series[0]) == sum(e.kind == "eval" for e in events)
        assert "[done]" in text_of(screen, "#title") and "lora" in text_of(screen, "#title")
        assert f"step {last.step}/{last.max_steps}" in text_of(screen, "#progress-text")
        stats = text_of(screen, "#stats")
        assert "util 87%" in stats and "71°C" in stats and "312 W" in stats
        assert f"loss {last.loss:.4f}" in stats
        listed = text_of(screen, "#checkpoints")
        assert f"checkpoint-{saved[-1].step}" in listed  # on disk: listed
        assert f"checkpoint-{saved[0].step}\n" not in listed  # deleted since: not listed, counted
        assert f"{len(saved) - 1} deleted" in listed
        assert seen and seen[-1].snapshot is s
        # a finished run has nothing to save or stop
        await pilot.press("x")
        assert not isinstance(app.screen, ConfirmDialog)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpDialog)
        await pilot.press("escape")
        await pilot.press("ctrl+c")  # the reflex over SSH detaches too
    assert app.return_value == ("detached", run_dir)


async def test_crashed_run_shows_error_and_log_tail(tmp_path, recorded_run):
    run_dir = recorded_run("tiny-crashed")
    status = ev.read_status(run_dir)
    app = create_app(make_services(tmp_path), run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.snapshot is not None and screen.gpu_sample is not None)
        assert "[failed]" in text_of(screen, "#title")
        assert status.error in text_of(screen, "#error")
        tail = text_of(screen, "#tail")
        assert "train.log tail" in tail and "loss" in tail
        assert "not available" in text_of(screen, "#stats")  # no NVIDIA driver: said plainly


async def test_follows_a_growing_run_and_sees_a_silent_death(tmp_path):
    run_dir = tmp_path / "runs" / "live"
    run_dir.mkdir(parents=True)
    from tuneplan.run_process import process_record

    status = ev.Status(phase="training", pids=[os.getpid()], max_steps=50, processes=[process_record(os.getpid())])
    ev.write_status(run_dir, status)
    app = create_app(make_services(tmp_path), run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        screen.poll_seconds = 0.05
        await wait_for(pilot, lambda: screen.snapshot is not None)
        for step in range(1, 11):
            ev.append_event(run_dir, ev.LogEvent(step=step, max_steps=50, loss=3.0 - step / 10,
                                                 learning_rate=1e-4, tokens_per_second=900.0))
        await wait_for(pilot, lambda: screen.snapshot.step == 10)
        assert "step 10/50" in text_of(screen, "#progress-text")
        # the process disappears without writing a final status: shown as crashed
        ev.write_status(run_dir, ev.Status(phase="training", pids=[2**22 + 12345], max_steps=50))
        await wait_for(pilot, lambda: screen.snapshot.phase == "crashed")
        assert "[crashed]" in text_of(screen, "#title")


async def test_save_now_and_stop_with_confirmation(tmp_path):
    import subprocess
    import sys

    import os

    from tuneplan.run_process import acquire_lock, process_record

    run_dir = tmp_path / "runs" / "live"
    run_dir.mkdir(parents=True)
    # the child stands in for a trainer: it holds the run's lock (only such a process is signalled)
    # and records itself
    fd = acquire_lock(run_dir)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))
    os.close(fd)
    try:

        ev.write_status(run_dir, ev.Status(phase="training", pids=[child.pid], max_steps=5,
                                           processes=[process_record(child.pid, armed=True)]))
        app = create_app(make_services(tmp_path), run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.snapshot is not None)
            await pilot.press("s")
            assert (run_dir / ev.SAVE_REQUEST_FILE).is_file()  # the run checkpoints at its next step
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmDialog)
            await pilot.press("n")
            assert app.screen is screen and child.poll() is None
            await pilot.press("x", "y")
            assert child.wait(timeout=10) is not None  # SIGTERM reached the run's process
    finally:
        child.kill()


async def test_multi_gpu_run_shows_a_row_per_rank(tmp_path, recorded_run):
    """A recorded two-process DDP run (gloo on the CPU): every rank's memory is shown."""
    run_dir = recorded_run("tiny-ddp")
    events, _ = _recorded("tiny-ddp")
    last = {}
    for e in events:
        if e.kind == "memory":
            last[e.rank] = e
    assert sorted(last) == [0, 1]
    app = create_app(make_services(tmp_path), run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.snapshot is not None)
        assert [r.rank for r in screen.snapshot.gpu_rows] == [0, 1]
        stats = text_of(screen, "#stats")
        for rank, e in last.items():
            assert f"{rank}:cpu {e.rss_bytes / 2**30:.1f} GiB rss" in stats


async def test_a_done_run_shows_its_eval_and_e_asks_before_replacing_it(tmp_path, recorded_run):
    from tuneplan.services import eval_results

    from eval_reports import sample_report

    run_dir = recorded_run("tiny-done")
    eval_results.write_eval(run_dir, sample_report(run="tiny-done"))
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])), run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: "held-out loss" in text_of(screen, "#eval"))
        line = text_of(screen, "#eval")
        assert line.startswith(eval_results.summary(sample_report())) and "tuneplan eval tiny-done --show" in line
        assert screen.check_action("evaluate", ()) is True
        await pilot.press("e")  # an eval exists: replacing it is asked first
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("escape")
        assert not screen._eval_running


async def test_a_crashed_run_offers_no_eval(tmp_path, recorded_run):
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])), run_dir=recorded_run("tiny-crashed"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.snapshot is not None and screen._eval_checked)
        assert screen.check_action("evaluate", ()) is False
        await pilot.press("e")
        await pilot.pause(0.1)
        assert not screen._eval_running and not screen.query_one("#eval", Static).display


@pytest.mark.slow
async def test_e_evaluates_a_done_run_and_shows_the_result(tmp_path, trained_lora_run):
    import shutil

    src, _ = trained_lora_run
    run_dir = tmp_path / "runs" / src.name
    shutil.copytree(src, run_dir)
    app = create_app(make_services(tmp_path, nvml=FakeNVML([rtx_4090()])), run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.snapshot is not None and screen._eval_checked)
        assert not screen.query_one("#eval", Static).display  # not evaluated yet: nothing shown
        await pilot.press("e")
        await wait_for(pilot, lambda: screen._eval_running)
        assert "evaluating" in text_of(screen, "#eval")
        await wait_for(pilot, lambda: not screen._eval_running, timeout=240)
        shown = text_of(screen, "#eval")
        assert "held-out loss" in shown, (run_dir / "eval.log").read_text()
    report = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert f"{report['base']['loss']:.4f} -> {report['adapter']['loss']:.4f}" in shown
