"""What the dashboard shows about one run, folded incrementally from the run directory.

Pure (no textual): a `RunFollower` owns the incremental readers of `events.jsonl` and
`train.log` and a `RunView` it updates in place; `snapshot()` returns a frozen copy the UI
can render. Memory and work per poll are bounded independently of the run's length: plot
series are decimated to at most `MAX_POINTS` points, the log and event tails are fixed-size
deques, and files are read from the last offset only.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tuneplan import events as ev
from tuneplan.files import CONFIG_MAX_BYTES, open_binary, read_text_bounded

MAX_POINTS = 400
"""Plot series keep at most this many points (every other point dropped when exceeded); a
plot 80 columns wide has at most 160 braille dots across, so nothing visible is lost."""
EMA_ALPHA = 0.1
"""Weight of the newest loss in the smoothed curve (an exponential moving average: about the
last 10 logged steps; per-step loss of small batches is noisy)."""
LOG_LINES = 200
LOG_READ_MAX_BYTES = 1 << 20
"""At most this much of train.log is read at a time (a log that grew by GBs shows its end)."""
EVENT_LINES = 200
LIVENESS_SECONDS = 2.0
"""How often a running run's pids are checked for a silent death."""
CHARTED = (ev.LogEvent, ev.MemoryEvent)
"""Events the dashboard draws (plots, GPU rows) rather than lists as lines."""


class _Series:
    """A bounded (x, y) series: when full, halves its resolution (keeps every other point)
    and from then on keeps one point in `stride`; the newest point is always shown.
    Cost per append is O(1) amortised, memory at most `limit` points."""

    def __init__(self, limit: int = MAX_POINTS):
        self.limit = limit
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = 1
        self._count = 0
        self._latest: tuple[float, float] | None = None

    def append(self, x: float, y: float) -> None:
        keep = self._count % self.stride == 0
        self._count += 1
        if not keep:
            self._latest = (x, y)
            return
        self._latest = None
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.limit:
            self.xs = self.xs[::2]
            self.ys = self.ys[::2]
            self.stride *= 2
            self._count = len(self.xs) * self.stride

    def copy(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._latest is None:
            return tuple(self.xs), tuple(self.ys)
        return tuple(self.xs) + (self._latest[0],), tuple(self.ys) + (self._latest[1],)


class _LineTail:
    """Incremental reader of a text file keeping its last `n` complete lines."""

    def __init__(self, path: Path, n: int = LOG_LINES):
        self.path = path
        self.lines: deque[str] = deque(maxlen=n)
        self._offset = 0
        self._partial = b""

    def read_new(self) -> bool:
        try:
            size = os.path.getsize(self.path)
            if size < self._offset:  # truncated / replaced: start over
                self._offset, self._partial = 0, b""
            if size == self._offset:
                return False
            if size - self._offset > LOG_READ_MAX_BYTES:  # a huge log: only its end is shown
                self._offset, self._partial = size - LOG_READ_MAX_BYTES, b""
            with open_binary(self.path, follow_symlinks=False) as f:  # a FIFO or device: refused, never read
                f.seek(self._offset)
                chunk = f.read(LOG_READ_MAX_BYTES)
        except OSError:
            return False
        self._offset += len(chunk)
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        for raw in parts:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            if "\r" in text:  # a progress bar redrawn in place: keep the last state
                text = text.rsplit("\r", 1)[-1]
            self.lines.append(text)
        return bool(parts)


@dataclass(frozen=True)
class RunSnapshot:
    """Everything the dashboard renders, frozen at one instant."""

    run_dir: str
    name: str
    phase: str
    """One of `tuneplan.events.PHASES` (or `unknown` before any status)."""
    phase_message: str | None
    step: int
    max_steps: int | None
    epoch: float | None
    num_epochs: float | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    tokens_per_second: float | None
    elapsed_seconds: float | None
    eta_seconds: float | None
    loss_series: tuple[tuple[float, ...], tuple[float, ...]]
    smooth_series: tuple[tuple[float, ...], tuple[float, ...]]
    """The train loss's exponential moving average (EMA_ALPHA), per logged step."""
    eval_series: tuple[tuple[float, ...], tuple[float, ...]]
    lr_series: tuple[tuple[float, ...], tuple[float, ...]]
    predicted_peak_bytes: int | None
    """The planner's `torch_peak_bytes` for this run (memory_probe event), in bytes."""
    measured_peak_bytes: int | None
    """Measured `torch.cuda.max_memory_allocated` (memory_probe or log event), in bytes."""
    checkpoints: tuple[tuple[int, str], ...]
    event_lines: tuple[str, ...]
    log_lines: tuple[str, ...]
    error: str | None
    pids: tuple[int, ...]
    version: int
    """Bumped on every change, so a renderer can skip identical snapshots."""
    summary: str = ""
    """One line from the run's config.toml: model, method and the main knobs."""
    replans: tuple[str, ...] = ()
    """OOM re-plans so far, each as one line (`replan` events)."""
    gpu_rows: tuple[GpuRow, ...] = ()
    """Several GPUs: one row per rank from its latest `memory` event, rank order (multi-GPU)."""

    @property
    def finished(self) -> bool:
        return self.phase in ev.FINAL_PHASES

    @property
    def crashed(self) -> bool:
        return self.phase in ("failed", "crashed")


@dataclass(frozen=True)
class GpuRow:
    """One rank's memory in a multi-GPU run (the `memory` events each rank writes), bytes."""

    rank: int
    device: str
    """`cuda:N` or `cpu`."""
    step: int | None
    allocated_peak_bytes: int | None
    """torch.cuda.max_memory_allocated on that rank's GPU (None on the CPU)."""
    reserved_peak_bytes: int | None
    rss_bytes: int | None
    """Resident memory of the process (CPU runs)."""


@dataclass
class RunView:
    """Mutable fold of a run's events and status (owned by one `RunFollower`)."""

    phase: str = "unknown"
    phase_message: str | None = None
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    num_epochs: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None
    predicted_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    error: str | None = None
    pids: tuple[int, ...] = ()
    status_log_tail: tuple[str, ...] = ()
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    replans: list[str] = field(default_factory=list)
    loss_series: _Series = field(default_factory=_Series)
    smooth_series: _Series = field(default_factory=_Series)
    _ema: float | None = None
    eval_series: _Series = field(default_factory=_Series)
    lr_series: _Series = field(default_factory=_Series)
    event_lines: deque = field(default_factory=lambda: deque(maxlen=EVENT_LINES))
    gpu_memory: dict = field(default_factory=dict)
    """rank -> GpuRow (latest `memory` event of that rank)."""

    def apply(self, e: ev.Event) -> None:
        """Fold one event into the view (kinds it does not know are ignored)."""
        if isinstance(e, ev.PhaseEvent):
            self.phase = e.phase
            self.phase_message = e.message
            if self.phase in ("failed", "crashed") and e.message:
                self.error = e.message
        elif isinstance(e, ev.LogEvent):
            self._apply_log(e)
        elif isinstance(e, ev.EvalEvent):
            if e.eval_loss is not None:
                self.eval_loss = float(e.eval_loss)
                self.eval_series.append(float(e.step or self.step), self.eval_loss)
        elif isinstance(e, ev.CheckpointEvent):
            self.checkpoints.append((e.step or 0, e.path or ""))
            del self.checkpoints[:-50]
        elif isinstance(e, ev.MemoryEvent) and e.rank is not None:
            self.gpu_memory[e.rank] = GpuRow(
                rank=e.rank, device=e.device or "?", step=e.step, allocated_peak_bytes=e.torch_allocated_peak_bytes,
                reserved_peak_bytes=e.torch_reserved_peak_bytes, rss_bytes=e.rss_bytes)
        elif isinstance(e, ev.ReplanEvent):
            self.replans.append(e.describe())
            del self.replans[:-10]
        elif isinstance(e, ev.MemoryProbeEvent):
            if e.predicted_torch_peak_bytes is not None:
                self.predicted_peak_bytes = e.predicted_torch_peak_bytes
            if e.torch_peak_bytes is not None:
                self.measured_peak_bytes = max(e.torch_peak_bytes, self.measured_peak_bytes or 0)
        if not isinstance(e, CHARTED):
            line = e.describe()
            if line:
                self.event_lines.append(line)

    def _apply_log(self, e: ev.LogEvent) -> None:
        if e.step is not None:
            self.step = e.step
        for name in ("max_steps", "epoch", "num_epochs", "tokens_per_second", "elapsed_seconds", "eta_seconds"):
            value = getattr(e, name)
            if value is not None:
                setattr(self, name, value)
        x = float(self.step)
        if e.loss is not None:
            self.loss = float(e.loss)
            self.loss_series.append(x, self.loss)
            self._ema = self.loss if self._ema is None else (
                EMA_ALPHA * self.loss + (1 - EMA_ALPHA) * self._ema)
            self.smooth_series.append(x, self._ema)
        if e.learning_rate is not None:
            self.learning_rate = float(e.learning_rate)
            self.lr_series.append(x, self.learning_rate)
        if e.torch_allocated_peak_bytes is not None:
            self.measured_peak_bytes = max(e.torch_allocated_peak_bytes, self.measured_peak_bytes or 0)

    def apply_status(self, status: ev.Status) -> None:
        """Status wins for the phase (it is what the launcher and the child last wrote); a
        non-final status whose processes are all gone reads as `crashed`."""
        self.phase = ev.effective_phase(status)
        self.pids = tuple(status.pids)
        if status.step and status.step > self.step:
            self.step = status.step
        if status.max_steps:
            self.max_steps = status.max_steps
        if status.error:
            self.error = status.error
        self.status_log_tail = tuple(status.log_tail or ())


def _config_facts(run_dir: Path) -> tuple[str, int | None, float | None]:
    """(summary line, predicted torch peak bytes, epochs) from the run's config.toml."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(read_text_bounded(run_dir / ev.CONFIG_FILE, CONFIG_MAX_BYTES, follow_symlinks=False))
    except (OSError, ValueError, RecursionError):
        return "", None, None
    model = str(data.get("model", {}).get("source", "?"))
    model = Path(model).name if "/" in model and not model.count("/") == 1 else model
    s = data.get("setup", {})
    t = data.get("training", {})
    parts = [model, s.get("method", "?")]
    if s.get("seq_len"):
        parts.append(f"seq {s['seq_len']}")
    if s.get("micro_batch"):
        parts.append(f"batch {s['micro_batch']}x{s.get('grad_accum', 1)}")
    peak = data.get("prediction", {}).get("torch_peak_bytes")
    epochs = None if t.get("max_steps") else t.get("epochs")
    return " · ".join(str(p) for p in parts), peak if isinstance(peak, int) else None, epochs


class RunFollower:
    """Follows one run directory. `poll()` reads only what was appended since the last poll
    and returns True when anything changed."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.view = RunView()
        self.summary = ""
        self._config_read = False
        self._events = ev.EventTail(self.run_dir)
        self._log = _LineTail(self.run_dir / ev.LOG_FILE)
        self._status_mtime: float | None = None
        self._status: ev.Status | None = None
        self._liveness_checked = 0.0
        self.version = 0
        self.skipped = 0
        """Events that could not be read (malformed fields)."""

    def poll(self) -> bool:
        changed = False
        if not self._config_read and (self.run_dir / ev.CONFIG_FILE).is_file():
            self._config_read = True
            self.summary, peak, epochs = _config_facts(self.run_dir)
            if self.view.predicted_peak_bytes is None:
                self.view.predicted_peak_bytes = peak
            if self.view.num_epochs is None:
                self.view.num_epochs = epochs
            changed = True
        for e in self._events.iter_new():  # streamed: a long history never sits in memory whole
            self.view.apply(e)
            changed = True
        self.skipped = self._events.malformed  # a malformed event (a newer schema?) never stops the follow
        changed |= self._log.read_new()
        try:
            mtime = os.stat(self.run_dir / ev.STATUS_FILE).st_mtime_ns
        except OSError:
            mtime = None
        if mtime is not None and mtime != self._status_mtime:
            status = ev.read_status(self.run_dir)
            if status is not None:
                self._status_mtime = mtime
                self._status = status
                self.view.apply_status(status)
                changed = True
        elif self._status is not None and self.view.phase not in ev.FINAL_PHASES:
            # The child may die without a word: check its pids every few seconds.
            now = time.monotonic()
            if now - self._liveness_checked > LIVENESS_SECONDS:
                self._liveness_checked = now
                if ev.effective_phase(self._status) != self.view.phase:
                    self.view.apply_status(self._status)
                    changed = True
        if changed:
            self.version += 1
        return changed

    def snapshot(self) -> RunSnapshot:
        v = self.view
        log_lines = tuple(self._log.lines) or v.status_log_tail
        return RunSnapshot(
            run_dir=str(self.run_dir), name=self.run_dir.name, phase=v.phase,
            phase_message=v.phase_message, step=v.step, max_steps=v.max_steps, epoch=v.epoch,
            num_epochs=v.num_epochs, loss=v.loss, eval_loss=v.eval_loss,
            learning_rate=v.learning_rate, tokens_per_second=v.tokens_per_second,
            elapsed_seconds=v.elapsed_seconds, eta_seconds=v.eta_seconds,
            loss_series=v.loss_series.copy(), smooth_series=v.smooth_series.copy(), eval_series=v.eval_series.copy(),
            lr_series=v.lr_series.copy(), predicted_peak_bytes=v.predicted_peak_bytes,
            measured_peak_bytes=v.measured_peak_bytes, checkpoints=tuple(v.checkpoints),
            event_lines=tuple(v.event_lines), log_lines=log_lines, error=v.error,
            pids=v.pids, version=self.version, summary=self.summary, replans=tuple(v.replans),
            gpu_rows=tuple(v.gpu_memory[r] for r in sorted(v.gpu_memory)),
        )
