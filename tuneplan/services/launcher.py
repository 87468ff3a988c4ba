"""Launch a run: check it, create its run directory, start the training process detached.

`launch(config, runs_root=...)` is what `tuneplan train` and the wizard call. Before anything
is written it checks the model (a local folder must hold `config.json`), the dataset (a local
file must exist, parse, and fit an accepted format; a corrupt JSONL line is named by its line
number) and the free disk space for checkpoints and the final save. Only then does it create a
fresh run folder (never reusing one), write `config.toml`, `status.json` (phase `queued`) and
start `python -m tuneplan.training.runner RUN_DIR` in its own session (`start_new_session`),
stdin from /dev/null and stdout/stderr into `train.log`: closing the terminal, an SSH
disconnect (SIGHUP to the launcher's process group) or the launcher's exit do not reach it.
Before the process starts, the launcher takes the run's lock (`tuneplan/run_process.py`) and
hands it down: one run, one trainer. A process that cannot be started leaves the run `failed`
with the reason, never `queued` with nobody behind it.
No torch here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from planner.gpus import format_gib
from tuneplan.config import PredictionConfig, RunConfig, save_config
from tuneplan.errors import UserError
from tuneplan.events import (
    CONFIG_FILE, DISK_ERRNOS, LOG_FILE, Failure, PhaseEvent, Status, append_event, read_status, write_status,
)
from tuneplan import run_process
from tuneplan.services import paths
from tuneplan.dataset_formats import (
    FORMAT_SAMPLE_ROWS, detect_format_of_rows, is_local_source, read_local_rows, row_to_training_example,
)

PREFLIGHT_ROWS = 10_000
"""Rows of a local dataset the launcher reads to check it (the worker reads them all)."""
DISK_MARGIN_BYTES = 64 * 2**20
"""Slack for logs, events, tokenizer files and the model card."""


def model_config_dict(source: str) -> dict | None:
    """config.json of a local folder or catalog model (None for an uncached Hub id)."""
    path = Path(source) / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from planner import catalog

    entry = catalog.find(source)
    return dict(entry.config) if entry is not None else None


def check_dataset(config: RunConfig) -> str | None:
    """Check a local dataset (exists, parses, fits a format); return its format or None for
    a Hub dataset (checked by the training process)."""
    d = config.data
    if not is_local_source(d.source):
        return None
    rows = read_local_rows(d.source, limit=min(PREFLIGHT_ROWS, d.max_samples or PREFLIGHT_ROWS))
    if not rows and d.source.lower().endswith(".parquet"):
        return None
    if not rows:
        raise UserError(f"dataset {d.source!r} has no rows; add examples or pick another file")
    if d.format == "auto":
        fmt = detect_format_of_rows([row for _, row in rows[:FORMAT_SAMPLE_ROWS]], source=os.path.basename(d.source))
    else:
        fmt = d.format
    for where, row in rows:
        row_to_training_example(row, fmt, where=where)
    return fmt


def _trainable_params(config: RunConfig, cfg: dict | None) -> int | None:
    """The planner's trainable-parameter count (`planner.throughput.trainable_parameters`: a
    fused MoE expert tensor's adapter has `lora_rank_factor` x the rank, as peft gives it);
    None for an architecture the planner does not model."""
    if cfg is None:
        return None
    from planner.spec import resolve_lora_targets, spec_from_config
    from planner.throughput import trainable_parameters

    try:
        spec = spec_from_config(cfg, config.model.source)
    except Exception:
        return None
    if config.setup.method != "full":
        try:
            resolve_lora_targets(spec, config.setup.lora_targets)  # an unknown name: one line naming the real ones
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return trainable_parameters(spec, config.setup)


def required_disk_bytes(config: RunConfig, cfg: dict | None) -> int:
    """Bytes the run writes at most: `save_total_limit + 1` checkpoints (a new one is written
    before the oldest is deleted), each the trainable weights (fp32, 4 B) plus AdamW's two
    fp32 moments (8 B) as transformers' `Trainer._save_checkpoint` writes them
    (`adapter_model.safetensors` + `optimizer.pt`), plus the final save (adapter fp32, or the
    full model in the compute dtype) and a margin."""
    n = _trainable_params(config, cfg)
    if n is None:
        return DISK_MARGIN_BYTES
    final = final_save_bytes(n, config.setup.method)
    return checkpoint_bytes(n) * (config.training.save_total_limit + 1) + final + DISK_MARGIN_BYTES


def final_save_bytes(trainable_params: int, method: str) -> int:
    """Bytes of the final save: the adapter in fp32 (4 B per parameter), or for `full` the
    whole model in the 16-bit compute dtype (2 B)."""
    return trainable_params * (2 if method == "full" else 4)


def checkpoint_bytes(trainable_params: int) -> int:
    """Bytes of one trainer checkpoint: the trainable weights (fp32, 4 B) plus AdamW's two fp32
    moments (8 B, `optimizer.pt`), as transformers' `Trainer._save_checkpoint` writes them."""
    return trainable_params * (4 + 8)


def largest_checkpoint_file_bytes(trainable_params: int) -> int:
    """The largest single file of a checkpoint: `optimizer.pt` (AdamW's two fp32 moments, 8 B
    per trainable parameter); what a file-size limit (`ulimit -f`) must allow."""
    return trainable_params * 8


def check_file_size_limit(config: RunConfig, cfg: dict | None) -> None:
    """Refuse a launch whose checkpoints cannot be written under this process's file-size
    limit (RLIMIT_FSIZE, inherited by the training process): the run would fail in its first
    checkpoint and leave nothing to resume."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    n = _trainable_params(config, cfg)
    if soft == resource.RLIM_INFINITY or n is None:
        return
    need = largest_checkpoint_file_bytes(n)
    if need > soft:
        raise UserError(f"the file-size limit (ulimit -f) is {soft} bytes but a checkpoint writes files of about "
                        f"{need} bytes (optimizer.pt): raise it (`ulimit -f unlimited`) before training")


def predict_memory(config: RunConfig, cfg: dict | None) -> PredictionConfig:
    """The planner's prediction for this setup (None fields when it cannot say)."""
    if cfg is None:
        return config.prediction
    try:
        from planner.parallel import estimate_parallel_memory as estimate_memory  # per GPU (several GPUs: DDP/FSDP)
        from planner.spec import spec_from_config

        est = estimate_memory(spec_from_config(cfg, config.model.source), config.setup)
    except Exception:  # an architecture the planner does not know: no prediction
        return config.prediction
    return PredictionConfig(torch_peak_bytes=est.torch_peak_bytes, device_bytes=est.device_bytes)


def prepare_run(config: RunConfig, runs_root: Path, *, free_bytes: Callable[[Path], int] = paths.free_bytes) -> Path:
    """Check everything, then create the run folder with its config and a queued status."""
    config = config.validate()
    from tuneplan.services.models import resolve_source

    source = resolve_source(config.model.source)  # the planner's resolver, without its spec
    config = replace(config, model=replace(config.model, source=source))
    check_dataset(config)
    from tuneplan.services import notify, tracking

    tracking.check_tracker(config.training.report_to)
    config = notify.with_user_default(config)
    if is_local_source(config.data.source):  # the training process runs in the run folder
        config = replace(config, data=replace(config.data, source=str(Path(config.data.source).expanduser().resolve())))
    cfg = model_config_dict(source)
    need = required_disk_bytes(config, cfg)
    have = free_bytes(runs_root)
    if have < need:
        raise UserError(f"not enough disk space in {runs_root}: {format_gib(have, 2)} free, the run needs about "
                        f"{format_gib(need, 2)} for checkpoints and the final save; free space, lower "
                        f"training.save_total_limit or pick another --runs-dir")
    check_file_size_limit(config, cfg)
    if config.prediction.torch_peak_bytes is None:
        config = replace(config, prediction=predict_memory(config, cfg))
    run_dir = paths.new_run_dir(runs_root, config.name, model=source, method=config.setup.method)
    try:
        config = replace(config, name=run_dir.name)
        save_config(config, run_dir / CONFIG_FILE)
        write_status(run_dir, Status(phase="queued", run_name=run_dir.name, effective_batch=config.effective_batch(),
                                     max_steps=config.training.max_steps))
        append_event(run_dir, PhaseEvent(phase="queued", message=f"created by tuneplan train (pid {os.getpid()})"))
    except BaseException:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # never leave a half-written run behind
        raise
    return run_dir


def lock_run(run_dir: Path, *, wait: float = 0.0) -> int:
    """Take the run's lock (one run, one trainer) and return the fd that holds it; a run
    another trainer holds is refused in one line."""
    try:
        return run_process.acquire_lock(run_dir, wait=wait)
    except run_process.RunLocked:
        raise UserError(f"run {Path(run_dir).name} is already being trained by another tuneplan process "
                        f"(it holds {Path(run_dir) / run_process.LOCK_FILE}); stop it first or follow it with "
                        f"`tuneplan attach {Path(run_dir).name}`") from None
    except OSError as exc:
        name = DISK_ERRNOS.get(exc.errno or 0, exc.strerror)
        raise UserError(f"cannot lock run {Path(run_dir).name}: {exc.filename or run_dir}: {name}; "
                        f"make the run folder writable") from None


def start_process(run_dir: Path, *, detach: bool = True, lock_fd: int | None = None) -> subprocess.Popen:
    """Start the run's supervisor. Detached: own session, stdin /dev/null, output to train.log.

    The run's lock (`lock_fd`, else taken here) passes to the supervisor, which keeps it for
    the run's life. If the process cannot be started (train.log not writable, no Python), the
    run is marked `failed` with the reason and a one-line UserError is raised."""
    run_dir = Path(run_dir)
    if lock_fd is None:
        lock_fd = lock_run(run_dir)
    try:
        from tuneplan.files import open_append

        with os.fdopen(open_append(run_dir / LOG_FILE), "ab") as log:  # never through a planted symlink
            proc = subprocess.Popen(
                [sys.executable, "-m", "tuneplan.training.runner", str(run_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=detach, close_fds=True, pass_fds=(lock_fd,), cwd=str(run_dir),
                env={**os.environ, "PYTHONUNBUFFERED": "1", run_process.LOCK_FD_ENV: str(lock_fd)},
            )
    except OSError as exc:
        what = exc.filename or run_dir
        reason = f"could not start the training process: {what}: {DISK_ERRNOS.get(exc.errno or 0, exc.strerror)}"
        _mark_failed(run_dir, reason)
        raise UserError(f"run {run_dir.name} failed to start: {what}: {exc.strerror}; fix it, then "
                        f"`tuneplan resume {run_dir.name}` (or train again)") from None
    finally:
        os.close(lock_fd)  # the supervisor holds the lock now (or nobody, if it did not start)
    status = read_status(run_dir) or Status(run_name=run_dir.name)
    if not status.pids:
        record = run_process.process_record(proc.pid)
        status.pids = [proc.pid]
        status.processes = [record] if record else []
        try:
            write_status(run_dir, status)
        except OSError:
            pass  # the supervisor writes its own status as soon as it runs
    return proc


def _mark_failed(run_dir: Path, reason: str) -> None:
    """Leave a run that never started as `failed` with the reason (so `resume` and `runs` see it)."""
    status = read_status(run_dir) or Status(run_name=Path(run_dir).name)
    status.phase, status.pids, status.processes = "failed", [], []
    status.fail(Failure.DIED, reason)
    try:
        write_status(run_dir, status)
        append_event(run_dir, PhaseEvent(phase="failed", message=reason))
    except OSError:
        pass


def resume(run_dir: Path, *, detach: bool = True) -> tuple[Path, subprocess.Popen]:
    """Restart a stopped, failed or crashed run from its newest complete checkpoint:
    lock it (a second concurrent `resume` is refused before it changes anything), point its
    config at the checkpoint, start the supervisor. Returns (checkpoint, process)."""
    from tuneplan.events import FINAL_PHASES
    from tuneplan.services import runs

    run_dir = Path(run_dir)
    status = read_status(run_dir)
    # a run that just stopped may still be on its way out: give it a moment to let go
    lock_fd = lock_run(run_dir, wait=15.0 if status is not None and status.phase in FINAL_PHASES else 0.0)
    try:
        ckpt = runs.prepare_resume(run_dir)
    except BaseException:
        os.close(lock_fd)
        raise
    return ckpt, start_process(run_dir, detach=detach, lock_fd=lock_fd)


def launch(config: RunConfig, runs_root: Path | None = None, *, detach: bool = True,
           free_bytes: Callable[[Path], int] = paths.free_bytes) -> Path:
    """Check, create the run folder and start the training process; return the run folder."""
    root = paths.runs_root(runs_root)
    run_dir = prepare_run(config, root, free_bytes=free_bytes)
    start_process(run_dir, detach=detach)
    return run_dir


def wait_for_phase(run_dir: Path, phases: tuple[str, ...], timeout: float) -> Status | None:
    """Poll `status.json` until its phase is one of `phases` and its processes have exited
    (or the run crashed)."""
    from tuneplan.events import effective_phase, live_pids

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(run_dir)
        if status is not None and effective_phase(status) == "crashed":
            return status
        if status is not None and status.phase in phases and not live_pids(status):
            return status
        time.sleep(0.2)
    return read_status(run_dir)
