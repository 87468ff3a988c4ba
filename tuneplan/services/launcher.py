"""Launch a run: check it, create its run directory, start the training process detached.

`launch(config, runs_root=...)` is what `tuneplan train` and the wizard call. Before anything
is written it checks the model (a local folder must hold `config.json`), the dataset (a local
file must exist, parse, and fit an accepted format; a corrupt JSONL line is named by its line
number) and the free disk space for checkpoints and the final save. Only then does it create a
fresh run folder (never reusing one), write `config.toml`, `status.json` (phase `queued`) and
start `python -m tuneplan.training.runner RUN_DIR` in its own session (`start_new_session`),
stdin from /dev/null and stdout/stderr into `train.log`: closing the terminal, an SSH
disconnect (SIGHUP to the launcher's process group) or the launcher's exit do not reach it.
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
from tuneplan.events import CONFIG_FILE, LOG_FILE, Status, append_event, make_event, read_status, write_status
from tuneplan.services import paths
from tuneplan.services.dataset_formats import (
    FORMAT_SAMPLE_ROWS, detect_format_of_rows, is_local_source, read_local_rows, row_to_training_example,
)

PREFLIGHT_ROWS = 10_000
"""Rows of a local dataset the launcher reads to check it (the worker reads them all)."""
DISK_MARGIN_BYTES = 64 * 2**20
"""Slack for logs, events, tokenizer files and the model card."""


def _looks_local(source: str) -> bool:
    return os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(os.path.expanduser(source))


def resolve_model_source(source: str) -> str:
    """A local folder (checked), a catalog name (-> its Hub id) or a Hub id."""
    if _looks_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise UserError(f"model folder {source!r} does not exist: give an existing folder, a catalog name or a Hub id")
        if not (folder / "config.json").is_file():
            raise UserError(f"model folder {source!r} has no config.json: is it a Hugging Face model folder?")
        return str(folder.resolve())
    from planner import catalog

    entry = catalog.find(source)
    if entry is not None:
        return entry.hub_id
    if "/" not in source:
        hint = catalog.suggestions(source)
        more = f"; did you mean {', '.join(hint)}?" if hint else ""
        raise UserError(f"unknown model {source!r}: not a folder, a catalog name or a Hub id (org/name){more}")
    return source


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
    if cfg is None:
        return None
    from planner.spec import resolve_lora_targets, spec_from_config

    try:
        spec = spec_from_config(cfg, config.model.source)
    except Exception:
        return None
    if config.setup.method == "full":
        return spec.parameter_count()
    try:
        layers = resolve_lora_targets(spec, config.setup.lora_targets)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    r = config.setup.lora_rank
    return sum(m.count * r * (m.in_features + m.out_features) for layer in layers for m in layer)


def required_disk_bytes(config: RunConfig, cfg: dict | None) -> int:
    """Bytes the run writes at most: `save_total_limit + 1` checkpoints (a new one is written
    before the oldest is deleted), each the trainable weights (fp32, 4 B) plus AdamW's two
    fp32 moments (8 B) as transformers' `Trainer._save_checkpoint` writes them
    (`adapter_model.safetensors` + `optimizer.pt`), plus the final save (adapter fp32, or the
    full model in the compute dtype) and a margin."""
    n = _trainable_params(config, cfg)
    if n is None:
        return DISK_MARGIN_BYTES
    per_checkpoint = n * (4 + 8)
    final = n * (2 if config.setup.method == "full" else 4)
    return per_checkpoint * (config.training.save_total_limit + 1) + final + DISK_MARGIN_BYTES


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
    source = resolve_model_source(config.model.source)
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
    if config.prediction.torch_peak_bytes is None:
        config = replace(config, prediction=predict_memory(config, cfg))
    run_dir = paths.new_run_dir(runs_root, config.name, model=source, method=config.setup.method)
    try:
        config = replace(config, name=run_dir.name)
        save_config(config, run_dir / CONFIG_FILE)
        write_status(run_dir, Status(phase="queued", run_name=run_dir.name, effective_batch=config.effective_batch(),
                                     max_steps=config.training.max_steps))
        append_event(run_dir, make_event("phase", phase="queued", message=f"created by tuneplan train (pid {os.getpid()})"))
    except BaseException:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # never leave a half-written run behind
        raise
    return run_dir


def start_process(run_dir: Path, *, detach: bool = True) -> subprocess.Popen:
    """Start the run's supervisor. Detached: own session, stdin /dev/null, output to train.log."""
    run_dir = Path(run_dir)
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuneplan.training.runner", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=detach, close_fds=True, cwd=str(run_dir),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    status = read_status(run_dir) or Status(run_name=run_dir.name)
    if not status.pids:
        status.pids = [proc.pid]
        write_status(run_dir, status)
    return proc


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
    from tuneplan.events import effective_phase, pid_alive

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(run_dir)
        if status is not None and effective_phase(status) == "crashed":
            return status
        if status is not None and status.phase in phases and not any(pid_alive(p) for p in status.pids):
            return status
        time.sleep(0.2)
    return read_status(run_dir)
