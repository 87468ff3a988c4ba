"""Runs on disk: list them with their state, and control one (stop, save, resume).

Reads only the run-directory files (`tuneplan/events.py`); no torch. A run whose process
died without a final status shows as `crashed`.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tuneplan.config import load_config, save_config
from tuneplan.errors import UserError
from tuneplan.events import (
    CONFIG_FILE, EVENTS_FILE, FINAL_PHASES, SAVE_REQUEST_FILE, Status, append_event, created_at, effective_phase,
    last_checkpoint, make_event, pid_alive, read_status, write_status,
)
from tuneplan.services import paths


@dataclass(frozen=True)
class RunSummary:
    name: str
    path: Path
    phase: str
    """Effective phase (`crashed` when the process died silently)."""
    step: int
    max_steps: int | None
    loss: float | None
    first_loss: float | None
    """Loss of the first `log` event (to show the trend)."""
    created_at: float
    """Unix seconds when the run folder was created."""
    updated_at: float | None
    attempt: int
    error: str | None

    def age_seconds(self, now: float | None = None) -> float:
        return (now or time.time()) - self.created_at


def _first_loss(run_dir: Path) -> float | None:
    """Loss of the first `log` event, reading only as far as it (events.jsonl can be long)."""
    import json

    try:
        with open(Path(run_dir) / EVENTS_FILE, encoding="utf-8") as f:
            for line in f:
                if '"log"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("kind") == "log" and event.get("loss") is not None:
                    return event["loss"]
    except FileNotFoundError:
        pass
    return None


def summarize(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    first_loss = _first_loss(run_dir)
    st = status or Status(phase="crashed")
    return RunSummary(
        name=run_dir.name, path=run_dir, phase=effective_phase(status), step=st.step, max_steps=st.max_steps,
        loss=st.loss, first_loss=first_loss, created_at=created_at(run_dir),
        updated_at=st.updated_at, attempt=st.attempt, error=st.error,
    )


def list_runs(root: Path) -> list[RunSummary]:
    """Every run under `root`, oldest first."""
    return [summarize(p) for p in paths.list_run_dirs(root)]


def newest_run(root: Path) -> Path | None:
    runs = paths.list_run_dirs(root)
    return runs[-1] if runs else None


def find_run(name: str | None, root: Path) -> Path:
    """A run folder by name or path (`None` / `latest`: the newest)."""
    return paths.resolve_run(name, root)


def _live_pids(status: Status | None) -> list[int]:
    return [p for p in (status.pids if status else []) if pid_alive(p)]


def wait_until_exited(status: Status | None, timeout: float) -> bool:
    """Wait for the processes of a status to exit; False if some are still alive."""
    deadline = time.monotonic() + timeout
    while _live_pids(status):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def is_running(run_dir: Path) -> bool:
    status = read_status(run_dir)
    return status is not None and status.phase not in FINAL_PHASES and bool(_live_pids(status))


def request_stop(run_dir: Path) -> list[int]:
    """SIGTERM the run's processes: it checkpoints at the end of the current step and stops.
    Returns the pids signalled."""
    status = read_status(run_dir)
    pids = _live_pids(status) if status is not None and status.phase not in FINAL_PHASES else []
    if not pids:
        raise UserError(f"run {Path(run_dir).name} is not running ({effective_phase(status)})")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    append_event(run_dir, make_event("message", level="info", text="stop requested (tuneplan stop)"))
    return pids


def request_save(run_dir: Path) -> None:
    """Ask a running run to checkpoint at its next optimizer step (without stopping)."""
    if not is_running(run_dir):
        raise UserError(f"run {Path(run_dir).name} is not running ({effective_phase(read_status(run_dir))})")
    (Path(run_dir) / SAVE_REQUEST_FILE).touch()


def prepare_resume(run_dir: Path) -> Path:
    """Point the run's config at its last checkpoint, ready for the launcher to restart it.

    The config is the run's current one (after any OOM re-plan), so the micro-batch, the
    accumulation and the effective batch are the ones the checkpoint was trained with."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    phase = effective_phase(status)
    if phase in FINAL_PHASES and not wait_until_exited(status, 15.0):
        raise UserError(f"run {run_dir.name} is still shutting down (pids {', '.join(map(str, _live_pids(status)))}); "
                        "try again in a moment")
    if phase == "done":
        raise UserError(f"run {run_dir.name} already finished; start a new one with `tuneplan train`")
    if phase not in FINAL_PHASES:
        raise UserError(f"run {run_dir.name} is still {phase}; stop it first with `tuneplan stop {run_dir.name}`")
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run {run_dir.name} has no checkpoint to resume from; start it again with `tuneplan train`")
    config = load_config(run_dir / CONFIG_FILE)
    save_config(replace(config, resume_from=str(ckpt)), run_dir / CONFIG_FILE, overwrite=True)
    st = status or Status(run_name=run_dir.name)
    st.phase, st.error, st.log_tail, st.pids = "queued", None, [], []
    st.step = int(ckpt.name.rsplit("-", 1)[1])  # steps after the checkpoint are redone
    write_status(run_dir, st)
    append_event(run_dir, make_event("phase", phase="queued", message=f"resuming from {ckpt.name}"))
    return ckpt
