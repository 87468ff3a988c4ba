"""Attaching to a long run: the follower streams events.jsonl in chunks and folds it into
bounded series, so its memory does not grow with the run (300k events, ~70 MB of JSON)."""

from __future__ import annotations

import time

from tuneplan import events as ev
from tuneplan.ui.run_view import MAX_POINTS

EVENTS = 300_000


def _long_run(run_dir):
    """A run's events.jsonl with EVENTS log lines shaped like the trainer's (one write)."""
    run_dir.mkdir()
    now = round(time.time(), 3)
    template = ev.dumps({"kind": "log", "time": now, **ev.compact(dict(
        step=0, max_steps=EVENTS, epoch=1.234567, loss=2.345678, learning_rate=1.234567e-4, grad_norm=0.4567891,
        tokens_per_second=12346, samples_per_second=6.1, elapsed_seconds=1.25, eta_seconds=123.4))},
        separators=(",", ":"))
    head, tail = template.split('"step":0,')
    lines = [f'{head}"step":{step},{tail}'.replace('"loss":2.345678', f'"loss":{2 + 1 / step:.7g}')
             for step in range(1, EVENTS + 1)]
    (run_dir / ev.EVENTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return (run_dir / ev.EVENTS_FILE).stat().st_size


FOLLOW = """
import resource, sys
from tuneplan.ui.run_view import RunFollower
follower = RunFollower(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
follower.poll()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = follower.snapshot()
print(before * 1024, after * 1024, s.step, s.max_steps, len(s.loss_series[0]), s.loss_series[1][-1])
"""


def test_attaching_to_a_300k_event_run_stays_small(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    size = _long_run(tmp_path / "run")
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", FOLLOW, str(tmp_path / "run")], capture_output=True, text=True,
                         cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, step, max_steps, points, last_loss = out.stdout.split()
    assert int(step) == EVENTS and int(max_steps) == EVENTS and int(points) <= MAX_POINTS + 1
    assert abs(float(last_loss) - (2 + 1 / EVENTS)) < 1e-6
    assert size > 50 * 2**20
    # reading the whole file at once held it and every parsed event (632 MB RSS for such a run);
    # streamed, the growth is a chunk plus the bounded series
    growth = int(after) - int(before)
    assert growth < 32 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB following {size / 2**20:.0f} MiB of events"


def test_events_are_strict_json_and_compact():
    import json

    line = ev.dumps(ev.LogEvent(**ev.compact({"loss": float("nan"), "grad_norm": float("inf"),
                                              "learning_rate": 1.0000000123e-4, "eta_seconds": None,
                                              "tokens_per_second": 1234.5678})).to_dict())
    event = json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(name)))
    assert event["loss"] is None and event["grad_norm"] is None  # not NaN / Infinity
    assert event["learning_rate"] == 1e-4 and event["tokens_per_second"] == 1235 and "eta_seconds" not in event
