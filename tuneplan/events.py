"""The run-directory schema shared by the training process and the dashboard.

Pure standard library: the training child writes with it, the dashboard and `tuneplan runs`
read with it. A run directory holds:

- `config.toml`  the resolved run configuration (written once by the launcher)
- `events.jsonl` append-only, one JSON object per line (see `Event` kinds below)
- `status.json`  the current state, rewritten atomically (see `Status`)
- `train.log`    the child's stdout/stderr (plain lines, no carriage returns)
- `checkpoints/` trainer checkpoints; `adapter/` the final adapter
- `tensorboard/` TensorBoard event files (`training.report_to = "tensorboard"`)

Every event has `kind` and `time` (unix seconds). Kinds:
- `phase`: `phase` (one of PHASES), optional `message`
- `log`: training metrics: `step`, `max_steps`, `epoch`, `loss`, `learning_rate`, `grad_norm`,
  `tokens_per_second`, `samples_per_second`, `elapsed_seconds`, `eta_seconds`,
  optional `torch_allocated_peak_bytes`, `torch_reserved_peak_bytes`, `rank`
- `eval`: `step`, `eval_loss`
- `memory_probe`: measured vs predicted after the second optimizer step: `step`,
  `torch_peak_bytes`, `torch_reserved_bytes`, `predicted_torch_peak_bytes`,
  `predicted_device_bytes`, `rank`
- `memory` (several GPUs, every rank at each log step): `step`, `rank`, `local_rank`,
  `device`, and `torch_allocated_peak_bytes` / `torch_reserved_peak_bytes` (CUDA) or
  `rss_bytes` (CPU); written by each rank itself (`tuneplan/training/distributed.py`)
- `checkpoint`: `step`, `path`
- `data`: dataset facts: `examples`, `dropped_too_long`, `truncated`, `format`,
  `train_examples`, `eval_examples`, `multi_turn` (conversations with several assistant
  turns), `every_assistant_turn` (whether all of them are trained, else the last one)
- `replan`: OOM recovery: `attempt`, `reason`, `changes` (knob -> [old, new]),
  `effective_batch` (unchanged by design), `resume_from` (checkpoint path or null)
- `message`: free text for the log tail: `level`, `text`
- `environment`: where an attempt trains (presets' evidence): `device`, `gpu_name`,
  `gpu_memory_bytes`, `driver_version`, `cuda_version`, `<library>_version`
Unknown keys are kept; readers ignore kinds they do not know. Files are strict JSON: a number
that is not finite (a NaN loss) is written as null (`strict_json`).

Control files a user command drops into the run directory (the training process polls them
once per optimizer step): `save.request` (checkpoint at the next step, then delete the file).
Stopping is SIGTERM to the pids in `status.json` (checkpoint, then phase `stopped`).

A run whose `status.json` is not final while none of its pids is alive died without saying
so: `effective_phase` reports it as `crashed`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1
PHASES = ("queued", "loading", "tokenizing", "training", "evaluating", "saving",
          "done", "failed", "stopped", "crashed")
FINAL_PHASES = ("done", "failed", "stopped", "crashed")

EVENTS_FILE = "events.jsonl"
STATUS_FILE = "status.json"
CONFIG_FILE = "config.toml"
LOG_FILE = "train.log"
SAVE_REQUEST_FILE = "save.request"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
"""Final save of a `full` run (whole model); LoRA/QLoRA runs save `adapter/`."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files of a run that reports to TensorBoard."""


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-inf) replaced by None, so `json.dumps(...,
    allow_nan=False)` writes strict JSON (RFC 8259 has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of `value` (see `strict_json`)."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def make_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A new event dict with `kind` and `time` (unix seconds, to the millisecond) set."""
    return {"kind": kind, "time": round(time.time(), 3), **fields}


MEASURED_FIELDS = ("tokens_per_second", "samples_per_second", "elapsed_seconds", "eta_seconds")
"""Timings: wall-clock measurements that vary by more than a percent from step to step."""


def compact(fields: dict[str, Any], digits: int = 7, measured_digits: int = 4) -> dict[str, Any]:
    """Per-step fields in as few bytes as they need (a `log` event per step adds up over a long
    run): None left out (readers treat a missing key as unknown), floats to `digits`
    significant digits (float32 precision: the loss and gradient norm are float32 tensors, more
    digits are noise) and timings (MEASURED_FIELDS) to `measured_digits`."""
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, float) and math.isfinite(v):
            v = float(f"{v:.{measured_digits if k in MEASURED_FIELDS else digits}g}")
            v = int(v) if v.is_integer() and abs(v) < 2**53 else v
        out[k] = v
    return out


def append_event(run_dir: Path, event: dict[str, Any]) -> None:
    """Append one event as a single line (one write call, so readers never see half a line
    from a single writer)."""
    line = dumps(event, separators=(",", ":")) + "\n"
    with open(Path(run_dir) / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write(line)


class EventTail:
    """Incremental reader of `events.jsonl`: each `read_new()` returns only the events
    appended since the last call (cost independent of the file's length so far)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        return list(self.iter_new())

    def iter_new(self, chunk_bytes: int = 1 << 20) -> Iterator[dict[str, Any]]:
        """The new events one at a time, reading `chunk_bytes` at a time: memory stays bounded
        by the chunk, not by the file (a long run's events.jsonl holds hundreds of MB)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(self._offset)
            while True:
                chunk = f.read(chunk_bytes)
                if not chunk:
                    return
                self._offset += len(chunk)
                data = self._partial + chunk
                lines = data.split(b"\n")
                self._partial = lines.pop()  # incomplete last line (or b"")
                for raw in lines:
                    if not raw.strip():
                        continue
                    try:
                        yield json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                        continue


def read_events(run_dir: Path) -> Iterator[dict[str, Any]]:
    """All complete events of a run, in order."""
    yield from EventTail(run_dir).iter_new()


@dataclass
class Status:
    """Contents of `status.json`: what a reader needs without replaying events."""

    phase: str = "queued"
    pids: list[int] = field(default_factory=list)
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    last_checkpoint: str | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)
    started_at: float | None = None
    updated_at: float | None = None
    schema_version: int = SCHEMA_VERSION
    attempt: int = 0
    """OOM recovery attempts so far (0: the first configuration)."""
    effective_batch: int | None = None
    """Sequences per optimizer step (micro-batch x accumulation x GPUs), kept across re-plans."""
    run_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Status":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def write_status(run_dir: Path, status: Status) -> None:
    """Atomically replace `status.json` (write a temp file, then rename)."""
    status.updated_at = time.time()
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(dumps(status.to_dict(), indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> Status | None:
    try:
        return Status.from_dict(json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could see)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def effective_phase(status: Status | None) -> str:
    """The phase to show: `crashed` when the status is not final and no pid is alive."""
    if status is None:
        return "crashed"
    if status.phase in FINAL_PHASES:
        return status.phase
    if status.pids and not any(pid_alive(p) for p in status.pids):
        return "crashed"
    return status.phase


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete trainer checkpoint of a run (`checkpoints/checkpoint-N` with the
    highest N that holds `trainer_state.json`, which the trainer writes last)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def created_at(run_dir: Path) -> float:
    """When a run was created: the time of its first event (the launcher's `queued`), else
    the folder's modification time. Unlike config.toml's mtime, a resume does not change it."""
    try:
        with open(Path(run_dir) / EVENTS_FILE, "rb") as f:
            return float(json.loads(f.readline())["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return Path(run_dir).stat().st_mtime
