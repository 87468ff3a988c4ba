"""Runs on disk: list them with their state, and control one (stop, save, resume).

Reads only the run-directory files (`tuneplan/events.py`); no torch. A run whose process
died without a final status shows as `crashed`; a run whose files cannot be read shows as
`unreadable` with the reason, and never hides the other runs. Control only ever signals
processes that are still the ones the run recorded (`tuneplan/run_process.py`) and whose run
lock is held.
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
    CONFIG_FILE, DISK_ERRNOS, EVENTS_FILE, FINAL_PHASES, SAVE_REQUEST_FILE, STOP_REQUEST_FILE, LogEvent,
    MessageEvent, PhaseEvent, Status, StatusUnreadable, append_event, created_at, effective_phase, last_checkpoint,
    live_pids, load_status, parse_event, read_status, write_status,
)
from tuneplan.files import EVENTS_TAIL_BYTES, read_head
from tuneplan.run_process import lock_is_held
from tuneplan.services import paths

UNREADABLE = "unreadable"
"""The phase `tuneplan runs` shows for a run whose files cannot be read."""


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
    """Loss of the first `log` event, found in the first MiB of events.jsonl (a run's first log
    step comes after a handful of short events; the file can be GBs, or not a file at all).
    Lines that are not UTF-8 JSON objects are skipped."""
    import json

    try:
        head = read_head(Path(run_dir) / EVENTS_FILE, EVENTS_TAIL_BYTES, follow_symlinks=False)
    except OSError:
        return None
    for line in head.split(b"\n"):
        if b'"log"' not in line:
            continue
        try:
            event = parse_event(json.loads(line))
        except (ValueError, RecursionError):  # not JSON, or a malformed event
            continue
        if isinstance(event, LogEvent) and event.loss is not None:
            return float(event.loss)
    return None


def summarize(run_dir: Path) -> RunSummary:
    """One run's line for `tuneplan runs`. Never raises for a corrupt run: it comes back with
    phase `unreadable` and the reason in `error`."""
    run_dir = Path(run_dir)
    try:
        status = load_status(run_dir)
    except StatusUnreadable as exc:
        return _unreadable(run_dir, str(exc))
    try:
        first_loss = _first_loss(run_dir)
        st = status or Status(phase="crashed")
        phase = effective_phase(status)
        if phase not in FINAL_PHASES and st.pids and lock_is_held(run_dir) is False:
            phase = "crashed"  # its processes look alive, but no trainer holds the run's lock
        error = st.error
        if phase == "crashed" and not error:
            error = folder_fault(run_dir)
        return RunSummary(
            name=run_dir.name, path=run_dir, phase=phase, step=st.step, max_steps=st.max_steps,
            loss=st.loss, first_loss=first_loss, created_at=created_at(run_dir),
            updated_at=st.updated_at, attempt=st.attempt, error=error,
        )
    except Exception as exc:  # whatever else is wrong with this folder must not hide the others
        return _unreadable(run_dir, f"{type(exc).__name__}: {exc}")


def _unreadable(run_dir: Path, reason: str) -> RunSummary:
    try:
        created = created_at(run_dir)
    except OSError:
        created = 0.0
    return RunSummary(name=run_dir.name, path=run_dir, phase=UNREADABLE, step=0, max_steps=None, loss=None,
                      first_loss=None, created_at=created, updated_at=None, attempt=0, error=reason)


def folder_fault(run_dir: Path) -> str | None:
    """Why nothing can be written to a run folder (read-only file system, no permission, full
    disk), named with the kernel's error name; None when it looks writable. Only looks
    (`statvfs`, `access`): listing runs never writes into them."""
    try:
        st = os.statvfs(run_dir)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"run folder {run_dir} is not writable (EROFS: Read-only file system)"
    if not os.access(run_dir, os.W_OK):
        return f"run folder {run_dir} is not writable (EACCES: Permission denied)"
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize  # root may use the reserved blocks
    if free == 0:
        return f"run folder {run_dir} is not writable (ENOSPC: No space left on device)"
    return None


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
    return live_pids(status)


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
    """Stop a run: it checkpoints at the end of the current step and stops. Only processes
    that are still the ones the run recorded (pid, start time, command line) while its lock is
    held are signalled (SIGTERM, once they have installed their handler); `stop.request` tells
    the others. Returns the pids signalled."""
    run_dir = Path(run_dir)
    status = _status_or_error(run_dir)
    from tuneplan.run_process import holds_run_lock, live_records

    records = live_records(status.pids, status.processes) if status is not None and \
        status.phase not in FINAL_PHASES else []
    # only a process that holds this run's lock is its trainer: a status.json can name any
    # process, and a run without a lock file has none (`run_process.holds_run_lock`)
    records = [r for r in records if holds_run_lock(r["pid"], run_dir)]
    if not records:
        phase = effective_phase(status)
        raise UserError(f"run {run_dir.name} is not running ({'crashed' if phase not in FINAL_PHASES else phase})")
    try:
        (run_dir / STOP_REQUEST_FILE).touch()
    except OSError:
        pass  # a read-only folder: the signal alone
    signalled = []
    for record in records:
        if not record.get("armed"):
            continue
        try:
            os.kill(record["pid"], signal.SIGTERM)
            signalled.append(record["pid"])
        except ProcessLookupError:
            pass
    try:
        append_event(run_dir, MessageEvent(level="info", text="stop requested (tuneplan stop)"))
    except OSError:
        pass
    return signalled


def _status_or_error(run_dir: Path) -> Status | None:
    try:
        return load_status(run_dir)
    except StatusUnreadable as exc:
        raise UserError(f"run {run_dir.name} is unreadable: {exc}; fix or remove {run_dir}") from None


def request_save(run_dir: Path) -> None:
    """Ask a running run to checkpoint at its next optimizer step (without stopping)."""
    if not is_running(run_dir):
        raise UserError(f"run {Path(run_dir).name} is not running ({effective_phase(read_status(run_dir))})")
    (Path(run_dir) / SAVE_REQUEST_FILE).touch()


def prepare_resume(run_dir: Path) -> Path:
    """Point the run's config at its last checkpoint, ready for the launcher to restart it
    (the caller holds the run lock: `launcher.resume`).

    The config is the run's current one (after any OOM re-plan), so the micro-batch, the
    accumulation and the effective batch are the ones the checkpoint was trained with."""
    run_dir = Path(run_dir)
    status = _status_or_error(run_dir)
    phase = effective_phase(status)
    if phase in FINAL_PHASES and not wait_until_exited(status, 15.0):
        raise UserError(f"run {run_dir.name} is still shutting down (pids {', '.join(map(str, _live_pids(status)))}); "
                        "try again in a moment")
    if phase == "done":
        raise UserError(f"run {run_dir.name} already finished; start a new one with `tuneplan train`")
    # queued with no process: a start that never happened (the caller holds the lock, so
    # nobody else is starting it now): resumable, never stuck
    if phase not in FINAL_PHASES and not (phase == "queued" and not _live_pids(status)):
        raise UserError(f"run {run_dir.name} is still {phase}; stop it first with `tuneplan stop {run_dir.name}`")
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run {run_dir.name} has no checkpoint to resume from; start it again with `tuneplan train`")
    fault = folder_fault(run_dir)
    if fault:
        raise UserError(f"cannot resume {run_dir.name}: {fault}; make it writable (or free space), then resume")
    config = load_config(run_dir / CONFIG_FILE)
    try:
        save_config(replace(config, resume_from=str(ckpt)), run_dir / CONFIG_FILE, overwrite=True)
        (run_dir / STOP_REQUEST_FILE).unlink(missing_ok=True)  # a stop of the previous attempt is done
        (run_dir / SAVE_REQUEST_FILE).unlink(missing_ok=True)
        st = status or Status(run_name=run_dir.name)
        st.phase, st.log_tail, st.pids, st.processes = "queued", [], [], []
        st.clear_failure()
        st.step = int(ckpt.name.rsplit("-", 1)[1])  # steps after the checkpoint are redone
        write_status(run_dir, st)
        append_event(run_dir, PhaseEvent(phase="queued", message=f"resuming from {ckpt.name}"))
    except OSError as exc:
        raise UserError(f"cannot resume {run_dir.name}: writing {exc.filename or run_dir} failed "
                        f"({DISK_ERRNOS.get(exc.errno or 0, exc.strerror)}); fix the folder, then resume") from None
    return ckpt
