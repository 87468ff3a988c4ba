"""The run follower: incremental, bounded, independent of run length."""

from __future__ import annotations

import json

from tuneplan import events as ev
from tuneplan.ui.run_view import MAX_POINTS, RunFollower


def test_follower_reads_incrementally_and_stays_bounded(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    follower = RunFollower(run_dir)
    assert follower.poll() is False
    n = 5 * MAX_POINTS
    with open(run_dir / ev.EVENTS_FILE, "w") as f:
        for step in range(1, n + 1):
            f.write(json.dumps({"kind": "log", "time": 0, "step": step, "loss": 1.0 / step}) + "\n")
        f.write('{"kind": "log", "step": ')  # half a line: not read yet
    assert follower.poll() is True
    s = follower.snapshot()
    assert s.step == n
    assert len(s.loss_series[0]) <= MAX_POINTS + 1
    assert s.loss_series[0][-1] == n  # the newest point is always shown
    assert s.smooth_series[0] == s.loss_series[0]
    assert s.smooth_series[1][-1] > s.loss_series[1][-1]  # a falling loss: the average lags above
    with open(run_dir / ev.EVENTS_FILE, "a") as f:
        f.write(f'{n + 1}, "loss": 0.0}}\n')
    assert follower.poll() is True and follower.snapshot().step == n + 1
    assert follower.poll() is False


def test_malformed_events_are_skipped_not_fatal(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ev.EVENTS_FILE).write_text(
        '{"kind": "log", "step": 1, "loss": 2.0}\n'
        '{"kind": "checkpoint", "step": "soon"}\n'  # a bad field
        '[1, 2, 3]\n'  # not an object
        '{"kind": "future-kind", "x": 1}\n'  # unknown kinds are ignored
        '{"kind": "log", "step": 2, "loss": 1.5}\n'
    )
    follower = RunFollower(run_dir)
    assert follower.poll()
    s = follower.snapshot()
    assert s.step == 2 and s.loss == 1.5 and follower.skipped == 1


def test_oom_replans_are_counted_for_the_title(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ev.append_event(run_dir, ev.ReplanEvent(attempt=1, reason="CUDA out of memory at step 6",
                                            changes={"micro_batch": [4, 2], "grad_accum": [4, 8]}))
    follower = RunFollower(run_dir)
    follower.poll()
    (line,) = follower.snapshot().replans
    assert "micro_batch 4 -> 2" in line and "grad_accum 4 -> 8" in line
