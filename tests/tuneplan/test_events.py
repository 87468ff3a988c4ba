"""Typed events (`tuneplan/events.py`): the recorded runs' events.jsonl read back as typed
events and written back to the same objects; one `describe()` shown by the CLI, the dashboard
and the alerts; failure reasons as `Failure`, in status.json and from older status files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneplan import events as ev
from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"


@pytest.mark.parametrize("name", ["tiny-done", "tiny-crashed", "tiny-ddp"])
def test_recorded_runs_read_as_typed_events_and_write_back_the_same_lines(name):
    lines = [json.loads(line) for line in (RUNS / name / ev.EVENTS_FILE).read_text().splitlines()]
    tail = ev.EventTail(RUNS / name)
    events = tail.read_new()
    assert tail.malformed == 0 and len(events) == len(lines)
    assert not [e for e in events if isinstance(e, ev.OtherEvent)]  # every kind is a known type
    for event, line in zip(events, lines):
        assert type(event) is ev.EVENT_TYPES[line["kind"]]
        assert json.loads(ev.dumps(event.to_dict())) == line  # nothing lost, library versions included
    env = next(e for e in events if isinstance(e, ev.EnvironmentEvent))
    assert env.gpu_name == "cpu" and env.versions()["torch"].startswith("2.")


def test_a_wrong_field_type_is_malformed_and_an_unknown_kind_is_kept(tmp_path):
    with pytest.raises(ev.MalformedEvent, match="checkpoint event field step"):
        ev.parse_event({"kind": "checkpoint", "time": 1.0, "step": "soon"})
    with pytest.raises(ev.MalformedEvent, match="phase event lacks"):
        ev.parse_event({"kind": "phase", "time": 1.0})
    with pytest.raises(ev.MalformedEvent, match="log event field loss"):
        ev.parse_event({"kind": "log", "step": 1, "loss": True})  # a bool is not a number
    assert ev.parse_event([1, 2]) is None
    future = {"kind": "gpu_thermals", "time": 2.0, "celsius": 81}
    other = ev.parse_event(future)
    assert isinstance(other, ev.OtherEvent) and other.kind == "gpu_thermals" and other.describe() is None
    assert other.to_dict() == future
    newer = {"kind": "eval", "time": 3.0, "step": 4, "eval_loss": 2.5, "eval_accuracy": 0.5}
    event = ev.parse_event(newer)
    assert isinstance(event, ev.EvalEvent) and event.eval_loss == 2.5 and event.to_dict() == newer
    # a NaN written by the trainer is strict JSON null, read back as "not finite"
    ev.append_event(tmp_path, ev.LogEvent(step=3, max_steps=9, loss=float("nan")))
    (back,) = ev.read_events(tmp_path)
    assert isinstance(back, ev.LogEvent) and back.loss is None and "loss not finite" in back.describe()


def _run_dir(tmp_path: Path) -> Path:
    save_config(RunConfig(model=ModelConfig(source="m"), data=DataConfig(source="d.jsonl"), name="r1"),
                tmp_path / ev.CONFIG_FILE)
    ev.write_status(tmp_path, ev.Status(phase="training", run_name="r1"))
    return tmp_path


def test_one_describe_for_the_cli_the_dashboard_and_the_alerts(tmp_path):
    from tuneplan.commands.train import format_event
    from tuneplan.services import notify
    from tuneplan.ui.run_view import RunFollower

    run_dir = _run_dir(tmp_path)
    replan = ev.ReplanEvent(attempt=1, reason="out of memory at step 6", changes={"micro_batch": [4, 2],
                            "grad_accum": [1, 2]}, effective_batch=4, resume_from=str(run_dir / "checkpoint-4"))
    shown = [replan, ev.PhaseEvent(phase="training", message="12 optimizer steps"),
             ev.EvalEvent(step=10, eval_loss=2.5), ev.CheckpointEvent(step=4, path=str(run_dir / "checkpoint-4")),
             ev.MessageEvent(level="warning", text="disk is filling up")]
    for event in shown:
        ev.append_event(run_dir, event)
    line = replan.describe()
    assert line == ("[replan 1] out of memory at step 6: micro_batch 4 -> 2, grad_accum 1 -> 2; effective batch 4 "
                    "kept; resuming from checkpoint-4")

    assert [format_event(e).strip() for e in shown] == [e.describe() for e in shown]  # the CLI
    follower = RunFollower(run_dir)
    follower.poll()
    snapshot = follower.snapshot()
    assert list(snapshot.event_lines) == [e.describe() for e in shown]  # the dashboard
    assert snapshot.replans == (line,)

    class Sink:
        alerts: list = []

        def send(self, alert):
            self.alerts.append(alert)

    watcher = notify.RunWatcher(run_dir, Sink(), stall_seconds=600)
    watcher.poll()
    (alert,) = Sink.alerts
    assert alert.kind == "replan" and alert.text == line  # the alert
    assert watcher.summary(ev.Status(phase="done", step=10))[0].count("eval loss 2.5000 at step 10") == 1


def test_details_stay_out_of_the_progress_stream_and_in_the_dashboard(tmp_path):
    from tuneplan.commands.train import format_event
    from tuneplan.ui.run_view import RunFollower

    info = ev.MessageEvent(level="info", text="resuming from checkpoint-4")
    log = ev.LogEvent(step=2, max_steps=9, loss=1.25)
    assert format_event(info) is None and format_event(log) == "  step 2/9, loss 1.2500"
    ev.append_event(tmp_path, info)
    ev.append_event(tmp_path, log)
    follower = RunFollower(tmp_path)
    follower.poll()
    assert list(follower.snapshot().event_lines) == ["resuming from checkpoint-4"]  # the log is plotted


def test_failure_is_a_type_in_status_json_and_read_from_older_files(tmp_path):
    status = ev.Status(phase="failed")
    status.fail(ev.Failure.OUT_OF_MEMORY_EVAL, "out of memory while evaluating at step 4")
    ev.write_status(tmp_path, status)
    assert json.loads((tmp_path / ev.STATUS_FILE).read_text())["failure"] == "out_of_memory_eval"
    back = ev.load_status(tmp_path)
    assert back.failure is ev.Failure.OUT_OF_MEMORY_EVAL and back.failure.out_of_memory
    # the words no longer decide: a failure named otherwise stays what it is named
    data = {**back.to_dict(), "failure": "bad_input", "error": "out of memory at step 2"}
    assert ev.Status.from_dict(data).failure is ev.Failure.BAD_INPUT
    with pytest.raises(ev.StatusUnreadable, match="failure 'tired' is not one of"):
        ev.Status.from_dict({**data, "failure": "tired"})
    # a run folder written before `failure` existed: its error's words, read once, on load
    assert ev.load_status(RUNS / "tiny-crashed").failure is ev.Failure.OUT_OF_MEMORY
    assert ev.load_status(RUNS / "tiny-done").failure is None


def test_the_supervisor_replans_on_the_failure_type_not_its_words(tmp_path):
    """A failure typed as evaluation's out-of-memory lowers the eval batch only, whatever its
    words say (they used to be matched by prefix)."""
    from dataclasses import replace

    from tuneplan.config import load_config
    from tuneplan.training.runner import replan

    run_dir = tmp_path
    config = RunConfig(model=ModelConfig(source="m"), data=DataConfig(source="d.jsonl"), name="r1")
    save_config(replace(config, training=replace(config.training, eval_batch=4)), run_dir / ev.CONFIG_FILE)
    status = ev.Status(phase="failed")
    status.fail(ev.Failure.OUT_OF_MEMORY_EVAL, "CUDA said no")
    assert replan(run_dir, status)
    assert load_config(run_dir / ev.CONFIG_FILE).training.eval_batch == 2
    (event,) = [e for e in ev.read_events(run_dir) if isinstance(e, ev.ReplanEvent)]
    assert event.changes == {"eval_batch": [4, 2]} and status.failure is None and status.phase == "queued"


def test_export_refuses_a_non_finite_run_by_its_failure_type(tmp_path, capsys):
    from tuneplan.cli import main

    runs = tmp_path / "runs"
    shutil.copytree(RUNS / "tiny-done", runs / "nan-run")
    status = ev.load_status(runs / "nan-run")
    status.phase = "failed"
    status.fail(ev.Failure.NON_FINITE, "non-finite loss nan at step 3: the weights are lost")
    ev.write_status(runs / "nan-run", status)
    code = main(["export", "nan-run", "--merge", "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2 and "failed with non-finite loss nan at step 3" in err and err.count("\n") == 1
