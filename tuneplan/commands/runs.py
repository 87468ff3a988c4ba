"""`tuneplan runs`: list runs with status, progress, loss and age (newest last)."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the per-user data folder)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def run(args: argparse.Namespace) -> int:
    from tuneplan.services import paths, runs

    root = paths.runs_root(args.runs_dir)
    summaries = runs.list_runs(root)
    now = time.time()
    if args.json:
        for s in summaries:
            print(json.dumps({"name": s.name, "path": str(s.path), "phase": s.phase, "step": s.step,
                              "max_steps": s.max_steps, "loss": s.loss, "first_loss": s.first_loss,
                              "age_seconds": round(s.age_seconds(now), 1), "attempt": s.attempt, "error": s.error}))
        return 0
    if not summaries:
        print(f"no runs in {root}")
        return 0
    rows = [("RUN", "STATUS", "PROGRESS", "LOSS", "AGE")]
    for s in summaries:
        progress = f"{s.step}/{s.max_steps}" if s.max_steps else str(s.step)
        if s.max_steps:
            progress += f" ({100 * s.step / s.max_steps:.0f}%)"
        if s.phase == runs.UNREADABLE:
            progress = "?"
        loss = "-" if s.loss is None else f"{s.loss:.4f}"
        if s.loss is not None and s.first_loss is not None and s.first_loss != s.loss:
            loss = f"{s.first_loss:.3f} -> {s.loss:.3f}"
        phase = s.phase + (f" (re-planned x{s.attempt})" if s.attempt else "")
        rows.append((s.name, phase, progress, loss, _age(s.age_seconds(now))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for s in summaries:
        if s.phase in ("failed", "crashed", runs.UNREADABLE) and s.error:
            print(f"{s.name}: {s.error}")
    return 0
