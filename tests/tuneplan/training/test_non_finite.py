"""A run whose loss or gradient norm stops being finite ends `failed` with the reason (never
`done`), its files stay strict JSON, and `export --merge` / `presets save` refuse it. Real
training of the tiny model; the NaN comes from `debug.poison_at_step`."""

from __future__ import annotations

import json
import math


from tiny_runs import tiny_config
from tuneplan.errors import EXIT_BAD_INPUT, NON_FINITE_PREFIX
from tuneplan.events import EVENTS_FILE, STATUS_FILE, Failure, parse_event, read_status


def _strict(text: str):
    def bad(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=bad)


def _run(tiny_model, runs_root, **changes):
    from tuneplan.services.launcher import prepare_run
    from tuneplan.training.runner import run_worker

    config = tiny_config(tiny_model, training={"max_steps": 8, "logging_steps": 1, "save_steps": 100,
                                               **changes.pop("training", {})}, **changes)
    run_dir = prepare_run(config, runs_root)
    result = run_worker(run_dir, install_signals=False)
    return run_dir, result


def test_non_finite_loss_fails_the_run_with_the_reason(tiny_model, runs_root, capsys, monkeypatch, tmp_path):
    # (a learning rate large enough to overflow the tiny model is refused by validation now:
    # training.learning_rate must be in (0, 10]; the NaN is injected instead)
    changes = {"debug": {"poison_at_step": 3}}
    monkeypatch.setenv("TUNEPLAN_PRESETS_DIR", str(tmp_path / "presets"))
    run_dir, result = _run(tiny_model, runs_root, **changes)
    status = read_status(run_dir)
    assert result.exit_code != 0
    assert status.phase == "failed", status
    assert status.error.startswith(NON_FINITE_PREFIX) and "step" in status.error
    assert status.failure is Failure.NON_FINITE
    assert status.step < 8 and not (run_dir / "adapter").exists()  # stopped, never saved as a result
    # strict JSON everywhere: no bare NaN / Infinity
    _strict((run_dir / STATUS_FILE).read_text())
    lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    events = [parse_event(_strict(line)) for line in lines]
    assert not any(e.kind == "phase" and e.phase == "done" for e in events)
    logs = [e for e in events if e.kind == "log"]
    assert logs and any(e.loss is None or e.grad_norm is None for e in logs)
    assert all(e.loss is None or math.isfinite(e.loss) for e in logs)
    # the readers cope with the nulls
    from tuneplan.commands.train import format_event
    from tuneplan.ui.run_view import RunFollower

    assert all(isinstance(format_event(e), str) for e in logs)
    follower = RunFollower(run_dir)
    follower.poll()
    assert follower.snapshot().phase == "failed" and follower.skipped == 0
    # export --merge and presets save refuse it, in one line
    from tuneplan.cli import main

    capsys.readouterr()
    for argv in (["export", str(run_dir), "--merge"], ["presets", "save", "nanrun", "--from", str(run_dir)]):
        assert main(argv) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
