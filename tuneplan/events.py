"""The run-directory schema shared by the training process and the dashboard.

Pure standard library: the training child writes with it, the dashboard and `tuneplan runs`
read with it. A run directory holds:

- `config.toml`  the resolved run configuration (written once by the launcher)
- `events.jsonl` append-only, one JSON object per line (see `Event` kinds below)
- `status.json`  the current state, rewritten atomically (see `Status`)
- `train.log`    the child's stdout/stderr (plain lines, no carriage returns)
- `checkpoints/` trainer checkpoints (published whole by a rename from `checkpoints/.partial/`);
  `adapter/` the final adapter (published the same way from `.adapter.partial/`)
- `run.lock`     flock'ed by the run's live trainer (`tuneplan/run_process.py`)
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
once per optimizer step): `save.request` (checkpoint at the next step, then delete the file),
`stop.request` (checkpoint and stop; written by `tuneplan stop` next to its SIGTERM, so a
process that has not yet installed its signal handler still stops cleanly). Stopping is
SIGTERM to the run's processes in `status.json` that are still the ones recorded
(`tuneplan/run_process.py`: pid, start time and command line), then phase `stopped`.

A run whose `status.json` is not final while none of its recorded processes is alive died
without saying so: `effective_phase` reports it as `crashed`. A `status.json` that cannot be
read (not UTF-8, not a JSON object, wrong field types) raises `StatusUnreadable` from
`load_status`; `read_status` returns None for it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tuneplan.files import EVENTS_TAIL_BYTES, STATUS_MAX_BYTES, open_append, open_binary, open_regular, read_bounded, read_head

SCHEMA_VERSION = 1
PHASES = ("queued", "loading", "tokenizing", "training", "evaluating", "saving",
          "done", "failed", "stopped", "crashed")
FINAL_PHASES = ("done", "failed", "stopped", "crashed")

EVENTS_FILE = "events.jsonl"
STATUS_FILE = "status.json"
CONFIG_FILE = "config.toml"
LOG_FILE = "train.log"
SAVE_REQUEST_FILE = "save.request"
STOP_REQUEST_FILE = "stop.request"
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
    from a single writer). A write the disk cuts short (ENOSPC, EFBIG) is taken back before
    the error is raised: a half line would swallow the next event appended after it."""
    line = dumps(event, separators=(",", ":")) + "\n"
    _append_whole(Path(run_dir) / EVENTS_FILE, line.encode("utf-8"))


def _append_whole(path: Path, data: bytes) -> None:
    fd = open_append(path)  # never through a symlink, never into a FIFO or device
    try:
        start = os.fstat(fd).st_size
        written = os.write(fd, data)  # raises when nothing at all could be written
        if written < len(data):
            try:
                os.write(fd, data[written:])  # the rest: the disk says why it stopped
            except OSError:
                os.ftruncate(fd, start)
                raise
    finally:
        os.close(fd)


MAX_LINE_BYTES = 4 << 20
"""An events.jsonl line longer than this is skipped unread (a real event is under a few KB)."""


class EventTail:
    """Incremental reader of `events.jsonl`: each `read_new()` returns only the events
    appended since the last call (cost independent of the file's length so far)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self._offset = 0
        self._partial = b""
        self._skipping = False

    def read_new(self) -> list[dict[str, Any]]:
        return list(self.iter_new())

    def iter_new(self, chunk_bytes: int = 1 << 20) -> Iterator[dict[str, Any]]:
        """The new events one at a time, reading `chunk_bytes` at a time: memory stays bounded
        by the chunk, not by the file (a long run's events.jsonl holds hundreds of MB)."""
        try:
            f = open_binary(self.path, follow_symlinks=False)
        except OSError:  # missing, or not a regular file (FileRefused): no events to show
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
                if self._skipping and lines:  # the rest of an over-long line
                    lines.pop(0)
                    self._skipping = False
                if len(self._partial) > MAX_LINE_BYTES:  # no event is this long (a sparse or junk file)
                    self._partial, self._skipping = b"", True
                for raw in lines:
                    if not raw.strip():
                        continue
                    try:
                        yield json.loads(raw)
                    except (ValueError, RecursionError):  # not JSON, not UTF-8, or absurdly nested
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
    processes: list[dict[str, Any]] = field(default_factory=list)
    """One `tuneplan.run_process.process_record` per pid: start time and command line, so a
    reused pid is never taken for the run's process."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Status":
        """A Status from a parsed `status.json`; `StatusUnreadable` names the first field of
        the wrong type."""
        if not isinstance(data, dict):
            raise StatusUnreadable(f"{STATUS_FILE} holds a JSON {type(data).__name__}, not an object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in known.items():
            check = _FIELD_TYPES.get(key)
            if check is not None and not check(value):
                raise StatusUnreadable(f"{STATUS_FILE} field {key} has the wrong type (got {value!r:.40})")
        if "phase" in known and known["phase"] not in PHASES:
            raise StatusUnreadable(f"{STATUS_FILE} phase {known['phase']!r:.40} is not one of {', '.join(PHASES)}")
        return cls(**known)


class StatusUnreadable(ValueError):
    """`status.json` exists but cannot be understood; the message says why (one line)."""


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt(check):
    return lambda v: v is None or check(v)


_FIELD_TYPES = {
    "phase": lambda v: isinstance(v, str), "pids": lambda v: isinstance(v, list) and all(_int(p) for p in v),
    "step": _int, "max_steps": _opt(_int), "epoch": _opt(_num), "loss": _opt(_num),
    "last_checkpoint": _opt(lambda v: isinstance(v, str)), "error": _opt(lambda v: isinstance(v, str)),
    "log_tail": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "started_at": _opt(_num), "updated_at": _opt(_num), "schema_version": _int, "attempt": _int,
    "effective_batch": _opt(_int), "run_name": _opt(lambda v: isinstance(v, str)),
    "processes": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}
"""What each `status.json` field must hold (a reader never formats a string as a number)."""

DISK_ERRNOS = {errno.ENOSPC: "ENOSPC", errno.EROFS: "EROFS", errno.EFBIG: "EFBIG", errno.EDQUOT: "EDQUOT"}
"""Write errors that mean "the disk refused", named as the kernel names them."""


def write_status(run_dir: Path, status: Status) -> None:
    """Atomically replace `status.json` (write a temp file, then rename). On a full disk
    (ENOSPC/EDQUOT), where even the small temp file cannot be written, it overwrites the file
    in place instead: the blocks it already owns take the new text, so the run's last word is
    still recorded. The temp file never outlives a failed write."""
    status.updated_at = time.time()
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    text = dumps(status.to_dict(), indent=1)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
            raise
        _overwrite_in_place(path, dumps(status.to_dict(), separators=(",", ":")).encode("utf-8"))


def _overwrite_in_place(path: Path, data: bytes) -> None:
    fd = open_regular(path, os.O_WRONLY, follow_symlinks=False)
    try:
        if len(data) > os.fstat(fd).st_size:  # growing needs new blocks: keep the essentials
            slim = json.loads(data)
            slim["log_tail"] = []
            data = dumps(slim, separators=(",", ":")).encode("utf-8")
        os.write(fd, data)  # a full disk may refuse even this: the caller hears of it
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def load_status(run_dir: Path) -> Status | None:
    """The run's status; None when there is no `status.json`. Raises `StatusUnreadable` (one
    line: what is wrong) when the file cannot be read or understood."""
    path = Path(run_dir) / STATUS_FILE
    try:
        raw = read_bounded(path, STATUS_MAX_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StatusUnreadable(f"cannot read {STATUS_FILE}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StatusUnreadable(f"{STATUS_FILE} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise StatusUnreadable(f"{STATUS_FILE} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise StatusUnreadable(f"{STATUS_FILE} is nested too deeply to be a status") from None
    return Status.from_dict(data)


def read_status(run_dir: Path) -> Status | None:
    """The run's status, or None when it is missing or unreadable (`load_status` says why)."""
    try:
        return load_status(run_dir)
    except StatusUnreadable:
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


def live_pids(status: Status | None) -> list[int]:
    """The run's pids whose process is still the one recorded (pid, start time, command
    line): after pid reuse or a reboot the number alone says nothing."""
    if status is None:
        return []
    from tuneplan.run_process import live_records

    return [r["pid"] for r in live_records(status.pids, status.processes)]


def effective_phase(status: Status | None) -> str:
    """The phase to show: `crashed` when the status is not final and none of its recorded
    processes is alive."""
    if status is None:
        return "crashed"
    if status.phase in FINAL_PHASES:
        return status.phase
    if status.pids and not live_pids(status):
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
        head = read_head(Path(run_dir) / EVENTS_FILE, EVENTS_TAIL_BYTES, follow_symlinks=False)
        return float(json.loads(head.split(b"\n", 1)[0])["time"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return Path(run_dir).stat().st_mtime
