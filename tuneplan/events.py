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

In code each kind is a small frozen dataclass (`PhaseEvent`, `LogEvent`, ... below): writers build
one and `append_event` serialises it to the line above; `parse_event` (and `EventTail`,
`read_events`) turn a line back into one, checking every known field's type. Each has one
`describe()`, the line that `tuneplan train --foreground`, the dashboard and the alerts show.

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
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from tuneplan.errors import NON_FINITE_PREFIX

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


# --- typed events --------------------------------------------------------------------------------

class MalformedEvent(ValueError):
    """An event of a known kind with a field of the wrong type (one line: which field)."""


def _fmt(v: float | int | None, spec: str) -> str:
    """A number from an event (`None` or not finite: `not finite`, the strict-JSON null)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "not finite"
    return format(v, spec)


def _gib(v: int | None) -> str:
    from planner.gpus import format_gib

    return format_gib(v, 2)


@dataclass(frozen=True, kw_only=True)
class Event:
    """One line of `events.jsonl`. `time` is unix seconds (None when a line has none); `extra`
    keeps the keys this version does not know, so a line read and written again loses nothing."""

    KIND: ClassVar[str] = ""
    time: float | None = field(default_factory=lambda: round(time.time(), 3))
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return self.KIND

    def describe(self) -> str | None:
        """The one line people read about this event (None: nothing to say)."""
        return None

    def is_detail(self) -> bool:
        """A detail the full record shows (the dashboard's event list) and a progress stream
        (`train --foreground`, `demo`) leaves out: informational messages, where the run trains,
        per-rank memory."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of its line: `kind`, `time`, the fields that are set (None is left
        out: readers treat a missing key as unknown), then the kept unknown keys."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        out.update(self.extra)
        return out


@dataclass(frozen=True, kw_only=True)
class PhaseEvent(Event):
    KIND: ClassVar[str] = "phase"
    phase: str
    """One of PHASES."""
    message: str | None = None

    def describe(self) -> str:
        return f"[{self.phase}]" + (f": {self.message}" if self.message else "")


@dataclass(frozen=True, kw_only=True)
class LogEvent(Event):
    """Training metrics at a logging step. `loss`/`grad_norm` None (null in the file): not a
    finite number (the run stops on it)."""

    KIND: ClassVar[str] = "log"
    step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    num_epochs: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None
    torch_allocated_peak_bytes: int | None = None
    """torch.cuda.max_memory_allocated, in bytes (CUDA runs)."""
    torch_reserved_peak_bytes: int | None = None
    rank: int | None = None

    def describe(self) -> str:
        parts = [f"step {self.step}/{self.max_steps}", f"loss {_fmt(self.loss, '.4f')}"]
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:.0f} tok/s")
        if self.eta_seconds is not None:
            parts.append(f"eta {self.eta_seconds:.0f}s")
        return ", ".join(parts)


@dataclass(frozen=True, kw_only=True)
class EvalEvent(Event):
    KIND: ClassVar[str] = "eval"
    step: int | None = None
    eval_loss: float | None = None

    def describe(self) -> str:
        return f"eval loss {_fmt(self.eval_loss, '.4f')} at step {self.step}"


@dataclass(frozen=True, kw_only=True)
class MemoryProbeEvent(Event):
    """Measured vs predicted after the second optimizer step (bytes)."""

    KIND: ClassVar[str] = "memory_probe"
    step: int | None = None
    device: str | None = None
    """`cuda` or `cpu`."""
    torch_peak_bytes: int | None = None
    torch_reserved_bytes: int | None = None
    process_bytes: int | None = None
    """This process's nvidia-smi memory (NVML; None where NVML does not list it)."""
    rss_peak_bytes: int | None = None
    """CPU runs: the process's peak resident memory (host memory, no GPU)."""
    predicted_torch_peak_bytes: int | None = None
    predicted_device_bytes: int | None = None
    rank: int | None = None

    def describe(self) -> str:
        if self.device == "cpu":
            return f"memory: CPU RSS peak {_gib(self.rss_peak_bytes)} (host memory; no GPU)"
        return (f"memory: measured peak {_gib(self.torch_peak_bytes)}, "
                f"predicted {_gib(self.predicted_torch_peak_bytes)}")


@dataclass(frozen=True, kw_only=True)
class MemoryEvent(Event):
    """One rank's memory at a logging step (several GPUs; each rank writes its own), bytes."""

    KIND: ClassVar[str] = "memory"
    step: int | None = None
    rank: int | None = None
    local_rank: int | None = None
    device: str | None = None
    """`cuda:N` or `cpu`."""
    torch_allocated_peak_bytes: int | None = None
    torch_reserved_peak_bytes: int | None = None
    rss_bytes: int | None = None

    def is_detail(self) -> bool:
        return True

    def describe(self) -> str:
        if self.rss_bytes is not None or self.torch_allocated_peak_bytes is None:
            return f"memory of rank {self.rank} ({self.device}) at step {self.step}: RSS {_gib(self.rss_bytes)}"
        return (f"memory of rank {self.rank} ({self.device}) at step {self.step}: peak "
                f"{_gib(self.torch_allocated_peak_bytes)}, reserved {_gib(self.torch_reserved_peak_bytes)}")


@dataclass(frozen=True, kw_only=True)
class CheckpointEvent(Event):
    KIND: ClassVar[str] = "checkpoint"
    step: int | None = None
    path: str | None = None

    def describe(self) -> str:
        return f"checkpoint {Path(self.path or '').name} (step {self.step})"


@dataclass(frozen=True, kw_only=True)
class DataEvent(Event):
    """Dataset facts. `multi_turn`: conversations with several assistant turns;
    `every_assistant_turn`: whether all of them are trained (else the last one)."""

    KIND: ClassVar[str] = "data"
    examples: int | None = None
    dropped_too_long: int | None = None
    truncated: int | None = None
    format: str | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    multi_turn: int | None = None
    every_assistant_turn: bool | None = None

    def describe(self) -> str:
        parts = [f"{self.examples} examples ({self.format})"]
        if self.train_examples is not None:
            parts.append(f"{self.train_examples} train, {self.eval_examples or 0} eval")
        parts.append(f"{self.dropped_too_long or 0} dropped as too long, {self.truncated or 0} truncated")
        return "data: " + "; ".join(parts)


@dataclass(frozen=True, kw_only=True)
class ReplanEvent(Event):
    """An out-of-memory recovery: `changes` maps a knob to [old, new]; the effective batch is
    kept by design; `resume_from` is the checkpoint path (None: from the start)."""

    KIND: ClassVar[str] = "replan"
    attempt: int | None = None
    reason: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    effective_batch: int | None = None
    resume_from: str | None = None

    def change_text(self) -> str:
        """`micro_batch 4 -> 2, grad_accum 1 -> 2` (pairs that are not [old, new] are left out)."""
        return ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in self.changes.items()
                         if isinstance(v, (list, tuple)) and len(v) == 2)

    def describe(self) -> str:
        line = f"[replan {self.attempt}] {self.reason or 'out of memory'}"
        if self.changes:
            line += f": {self.change_text()}"
        if self.effective_batch is not None:
            line += f"; effective batch {self.effective_batch} kept"
        return line + f"; resuming from {Path(self.resume_from).name if self.resume_from else 'the start'}"


@dataclass(frozen=True, kw_only=True)
class MessageEvent(Event):
    """Free text for the log tail; `level` is info, warning or error."""

    KIND: ClassVar[str] = "message"
    text: str
    level: str = "info"
    rank: int | None = None

    def is_detail(self) -> bool:
        return self.level == "info"

    def describe(self) -> str:
        return self.text if self.level == "info" else f"{self.level}: {self.text}"


@dataclass(frozen=True, kw_only=True)
class EnvironmentEvent(Event):
    """Where an attempt trains (a preset's evidence). Library versions are `<library>_version`
    keys (kept in `extra`; `versions()` lists them)."""

    KIND: ClassVar[str] = "environment"
    device: str | None = None
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None

    @classmethod
    def of(cls, facts: dict[str, Any]) -> "EnvironmentEvent":
        """The event for `facts` (`runner.environment_facts()`): library versions go to `extra`."""
        event = parse_event({"kind": cls.KIND, "time": round(time.time(), 3), **facts})
        assert isinstance(event, cls)
        return event

    def is_detail(self) -> bool:
        return True

    def versions(self) -> dict[str, str]:
        return {k[: -len("_version")]: str(v) for k, v in self.extra.items() if k.endswith("_version")}

    def describe(self) -> str:
        if self.gpu_name in (None, "cpu"):
            where = "the CPU"
        else:
            where = f"{self.gpu_name} ({_gib(self.gpu_memory_bytes)})"
            where += "".join(f", {k} {v}" for k, v in (("driver", self.driver_version), ("CUDA", self.cuda_version)) if v)
        torch = self.versions().get("torch")
        return f"training on {where}" + (f", torch {torch}" if torch else "")


@dataclass(frozen=True, kw_only=True)
class OtherEvent(Event):
    """A kind this version does not know (a newer writer): kept, never described."""

    name: str = ""

    @property
    def kind(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, **({"time": self.time} if self.time is not None else {}), **self.extra}


EVENT_TYPES: dict[str, type[Event]] = {cls.KIND: cls for cls in (
    PhaseEvent, LogEvent, EvalEvent, MemoryProbeEvent, MemoryEvent, CheckpointEvent, DataEvent, ReplanEvent,
    MessageEvent, EnvironmentEvent)}
"""Every kind this version writes and reads, by its `kind` string."""


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECK_OF_TYPE: dict[Any, Callable[[Any], bool]] = {
    int: _int, float: _num, str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool),
    dict: lambda v: isinstance(v, dict), list: lambda v: isinstance(v, list),
}


def _field_checks(cls: type[Event]) -> dict[str, Callable[[Any], bool]]:
    """Field name -> a check of its JSON value, from the dataclass's annotations (None is
    always accepted: an unknown value)."""
    hints = typing.get_type_hints(cls)
    checks = {}
    for f in fields(cls):
        if f.name == "extra":
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        checks[f.name] = _CHECK_OF_TYPE[typing.get_origin(tp) or tp]
    return checks


_FIELD_CHECKS = {kind: _field_checks(cls) for kind, cls in EVENT_TYPES.items()}


def parse_event(data: Any) -> Event | None:
    """The typed event of one parsed line; None for a line that is not a JSON object. A known
    kind with a field of the wrong type raises `MalformedEvent`; an unknown kind is an
    `OtherEvent` (readers skip it)."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    when = data.get("time")
    when = when if _num(when) else None
    if cls is None:
        return OtherEvent(name=str(kind), time=when,
                          extra={k: v for k, v in data.items() if k not in ("kind", "time")})
    checks = _FIELD_CHECKS[cls.KIND]
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("kind", "time"):
            continue
        check = checks.get(key)
        if check is None:
            extra[key] = value
        elif value is not None:
            if not check(value):
                raise MalformedEvent(f"{cls.KIND} event field {key} has the wrong type (got {value!r:.40})")
            known[key] = value
    try:
        return cls(time=when, extra=extra, **known)
    except TypeError:  # a required field is missing
        raise MalformedEvent(f"{cls.KIND} event lacks a required field") from None


def append_event(run_dir: Path, event: Event) -> None:
    """Append one event as a single line (one write call, so readers never see half a line
    from a single writer). A write the disk cuts short (ENOSPC, EFBIG) is taken back before
    the error is raised: a half line would swallow the next event appended after it."""
    line = dumps(event.to_dict(), separators=(",", ":")) + "\n"
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
    appended since the last call (cost independent of the file's length so far), typed.
    Lines that are not JSON objects are passed over; events of a known kind with a field of
    the wrong type are counted in `malformed` and passed over too."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self._offset = 0
        self._partial = b""
        self._skipping = False
        self.malformed = 0

    def read_new(self) -> list[Event]:
        return list(self.iter_new())

    def iter_new(self, chunk_bytes: int = 1 << 20) -> Iterator[Event]:
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
                        event = parse_event(json.loads(raw))
                    except MalformedEvent:
                        self.malformed += 1
                        continue
                    except (ValueError, RecursionError):  # not JSON, not UTF-8, or absurdly nested
                        continue
                    if event is not None:
                        yield event


def read_events(run_dir: Path) -> Iterator[Event]:
    """All complete events of a run, in order."""
    yield from EventTail(run_dir).iter_new()


class Failure(str, Enum):
    """Why a run failed, as a type: `status.json`'s `failure` (the words for people are in
    `error`). The supervisor, `export` and the alerts decide on this, never on the error's text."""

    OUT_OF_MEMORY = "out_of_memory"
    """A training step ran out of memory: the supervisor re-plans (`training/recovery.py`)."""
    OUT_OF_MEMORY_EVAL = "out_of_memory_eval"
    """Evaluation ran out of memory: the supervisor lowers the eval batch only."""
    NON_FINITE = "non_finite"
    """The loss or gradient norm stopped being a finite number: the weights are lost."""
    BAD_INPUT = "bad_input"
    """Something the user can fix (a `UserError` in the training process)."""
    DISK = "disk"
    """The disk refused a write (ENOSPC, EROFS, EFBIG, EDQUOT)."""
    ERROR = "error"
    """An exception in the training process (a library failure or a bug; traceback in train.log)."""
    DIED = "died"
    """The training process ended without saying why (killed, segfault), or never started."""

    @property
    def out_of_memory(self) -> bool:
        return self in (Failure.OUT_OF_MEMORY, Failure.OUT_OF_MEMORY_EVAL)


def _legacy_failure(error: str) -> Failure | None:
    """The failure of a status.json written before `failure` existed, from its error's words
    (the only place they are read): `out of memory while evaluating ...`, `out of memory ...`,
    `non-finite ...`; None for any other text."""
    if error.startswith("out of memory while evaluating"):
        return Failure.OUT_OF_MEMORY_EVAL
    if error.startswith("out of memory"):
        return Failure.OUT_OF_MEMORY
    if error.startswith(NON_FINITE_PREFIX):
        return Failure.NON_FINITE
    return None


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
    failure: Failure | None = None
    """Why the run failed (with `error`, its words); None while it has not."""

    def fail(self, failure: Failure, error: str) -> None:
        """Record a failure: its type and its one line for people."""
        self.failure, self.error = failure, error

    def clear_failure(self) -> None:
        self.failure, self.error = None, None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failure"] = self.failure.value if self.failure is not None else None
        return data

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
        if known.get("failure") is not None:
            try:
                known["failure"] = Failure(known["failure"])
            except ValueError:
                raise StatusUnreadable(f"{STATUS_FILE} failure {known['failure']!r:.40} is not one of "
                                       f"{', '.join(f.value for f in Failure)}") from None
        elif "failure" not in known and isinstance(known.get("error"), str):  # written before `failure`
            known["failure"] = _legacy_failure(known["error"])
        return cls(**known)


class StatusUnreadable(ValueError):
    """`status.json` exists but cannot be understood; the message says why (one line)."""


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
    "failure": _opt(lambda v: isinstance(v, str)),
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
