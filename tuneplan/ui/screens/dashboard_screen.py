"""The live dashboard of one run: follows the run directory's files, never the process."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Footer, ProgressBar, Static
from textual_plotext import PlotextPlot

from tuneplan.ui.app_base import WizardScreen
from tuneplan.ui.formatting import duration, gib, last_lines, rate
from tuneplan.ui.messages import GpuSampled, RunUpdated
from tuneplan.ui.run_view import RunFollower, RunSnapshot
from tuneplan.ui.widgets.dialogs import ConfirmDialog, HelpDialog

POLL_SECONDS = 0.5
"""How often the run files are checked (a stat and a read from the last offset)."""
GPU_SECONDS = 1.0
PLOT_SECONDS = 2.0
"""Plots are rebuilt at most this often (numbers and progress follow every poll)."""
TAIL_LINES = 6
"""Lines of the event/log tail at 80x24 (header included); more when the terminal is taller."""
HELP = [
    ("s", "save a checkpoint now (the run continues)"),
    ("x", "stop the run: checkpoint, then exit (asks first)"),
    ("l", "switch the tail between events and train.log"),
    ("e", "when the run is done: evaluate it beside its base model (`tuneplan eval RUN`)"),
    ("d / q", "detach: leave the dashboard, the run continues"),
    ("?", "this help"),
    ("", "reattach any time: tuneplan attach [RUN]"),
]


class RunFollowFailed(Message):
    """The run files could not be read (the follower keeps trying)."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class EvalUpdated(Message):
    """What the eval line shows now: a report's summary, "evaluating...", or an error."""

    def __init__(self, text: str, *, running: bool = False, failed: bool = False) -> None:
        super().__init__()
        self.text = text
        self.running = running
        self.failed = failed


class DashboardScreen(WizardScreen[None]):
    """Loss/LR plots, progress, throughput, GPU, memory, event/log tail and checkpoints."""

    CSS_PATH = "dashboard_screen.tcss"
    BINDINGS = [
        Binding("s", "save", "Save now"),
        Binding("x", "stop", "Stop"),
        Binding("l", "toggle_tail", "Log/events"),
        Binding("e", "evaluate", "Evaluate"),
        Binding("d", "detach", "Detach"),
        Binding("q", "detach", "Detach", show=False),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(self, run_dir: Path, *, poll_seconds: float = POLL_SECONDS, gpu_index: int = 0) -> None:
        super().__init__()
        self.gpu_index = gpu_index
        self.run_dir = Path(run_dir)
        self.poll_seconds = poll_seconds
        self.snapshot: RunSnapshot | None = None
        self.gpu_sample: Any = None
        self.gpu_note: str = "sampling..."
        self.show_log = False
        self._stop_event = threading.Event()
        self._plotted_version = -1
        self._plotted_at = 0.0
        self._plot_timer: Timer | None = None
        self._eval_checked = False
        self._eval_running = False
        self._eval_exists = False

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal(id="progress-row"):
            # A known total from the start: an indeterminate bar animates (and costs CPU) forever.
            yield ProgressBar(total=1, show_eta=False, id="progress")
            yield Static(id="progress-text")
        with Horizontal(id="plots"):
            yield PlotextPlot(id="loss-plot")
            yield PlotextPlot(id="lr-plot")
        yield Static(id="stats")
        yield Static(id="eval")
        yield Static(id="error")
        with Horizontal(id="bottom"):
            yield Static(id="tail")
            yield Static(id="checkpoints")
        yield Footer()

    def on_mount(self) -> None:
        for plot_id, title in (("#loss-plot", "loss (raw, smoothed, o eval)"),
                               ("#lr-plot", "learning rate")):
            plt = self.query_one(plot_id, PlotextPlot).plt
            plt.title(title)
        self.query_one("#title", Static).update(Text(f" {self.run_dir.name}  loading...", style="bold"))
        self.follow_run()
        self.sample_gpu()

    def on_unmount(self) -> None:
        self._stop_event.set()

    # -- workers: they post messages and never touch widgets -----------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="follow-run")
    def follow_run(self) -> None:
        follower = RunFollower(self.run_dir)
        first = True
        while not self._stop_event.is_set():
            try:
                if follower.poll() or first:
                    self.post_message(RunUpdated(follower.snapshot()))
                    first = False
            except OSError as exc:  # e.g. the run folder was removed: say so, keep trying
                self.post_message(RunFollowFailed(f"cannot read {self.run_dir}: {exc}"))
            except Exception as exc:  # corrupt files: say so instead of "loading..." forever
                self.post_message(RunFollowFailed(f"cannot read {self.run_dir}: {type(exc).__name__}: {exc}"))
            self._stop_event.wait(self.poll_seconds)

    @work(thread=True, exclusive=True, exit_on_error=False, group="sample-gpu")
    def sample_gpu(self) -> None:
        gpu = self.app.services.gpu
        while not self._stop_event.is_set():
            sample: Any
            try:
                sample = gpu.sample(self.gpu_index)
                if sample is None:
                    sample = f"not available: {gpu.status()}"
            except Exception as exc:  # the probe never raises by contract; if it does, say so
                sample = f"not available ({type(exc).__name__})"
            self.post_message(GpuSampled(sample))
            if isinstance(sample, str):  # no NVML: nothing will change, stop sampling
                return
            self._stop_event.wait(GPU_SECONDS)

    @work(thread=True, exclusive=True, exit_on_error=False, group="eval")
    def load_eval(self) -> None:
        """The summary of `RUN/eval.json` when the run has one (nothing shown otherwise)."""
        from tuneplan.services.eval_results import summary

        report = self.app.services.runs.read_eval(self.run_dir)
        if report is not None:
            self.post_message(EvalUpdated(f"{summary(report)}  (tuneplan eval {self.run_dir.name} --show)"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="eval")
    def run_eval(self, force: bool) -> None:
        """`tuneplan eval RUN` as its own process; its result (or its one error line) comes back."""
        from tuneplan.services.eval_results import summary

        runs = self.app.services.runs
        try:
            proc = runs.start_eval(self.run_dir, force=force)
        except OSError as exc:
            self.post_message(EvalUpdated(f"eval could not start: {exc}", failed=True))
            return
        self.post_message(EvalUpdated(f"evaluating: base vs tuned on the held-out split "
                                      f"(tuneplan eval {self.run_dir.name}; log in eval.log)...", running=True))
        rc = proc.wait()
        report = runs.read_eval(self.run_dir) if rc == 0 else None
        if report is not None:
            self.post_message(EvalUpdated(f"{summary(report)}  (tuneplan eval {self.run_dir.name} --show)"))
        else:
            self.post_message(EvalUpdated(f"eval failed: {runs.eval_error(self.run_dir) or f'exit code {rc}'}",
                                          failed=True))

    # -- rendering -----------------------------------------------------------------------
    @on(RunUpdated)
    def _on_run_updated(self, message: RunUpdated) -> None:
        self.snapshot = message.snapshot
        self._render_snapshot()
        if self.snapshot.finished and not self._eval_checked:
            self._eval_checked = True
            self.refresh_bindings()  # `e` shows once the run is done
            self.load_eval()

    @on(EvalUpdated)
    def _on_eval_updated(self, message: EvalUpdated) -> None:
        self._eval_running = message.running
        self._eval_exists = self._eval_exists or not (message.running or message.failed)
        line = self.query_one("#eval", Static)
        line.display = True
        line.update(Text(message.text, style="bold red" if message.failed else "dim" if message.running else ""))

    @on(RunFollowFailed)
    def _on_follow_failed(self, message: RunFollowFailed) -> None:
        self.notify(message.error, severity="error", timeout=3)

    @on(GpuSampled)
    def _on_gpu_sampled(self, message: GpuSampled) -> None:
        self.gpu_sample = message.sample
        if self.snapshot is not None:
            self.query_one("#stats", Static).update(self._stats_text(self.snapshot))

    def _render_snapshot(self) -> None:
        s = self.snapshot
        if s is None:
            return
        phase_style = {"done": "bold green", "failed": "bold red", "crashed": "bold red",
                       "stopped": "bold yellow"}.get(s.phase, "bold")
        title = Text(f" {s.name}  ", style="bold")
        title.append(f"[{s.phase}]", style=phase_style)
        if s.replans:
            title.append(f" re-planned x{len(s.replans)}", style="bold yellow")
        if s.summary:
            title.append(f"  {s.summary}")
        elif s.phase_message and not s.crashed:
            title.append(f" {s.phase_message}", style="dim")
        self.query_one("#title", Static).update(title)

        bar = self.query_one("#progress", ProgressBar)
        if s.max_steps:
            bar.update(total=s.max_steps, progress=s.step)
        steps = f"step {s.step}/{s.max_steps or '?'}"
        epoch = f"epoch {s.epoch:.2f}" if s.epoch is not None else "epoch -"
        if s.num_epochs:
            epoch += f"/{s.num_epochs:g}"
        eta = s.phase if s.finished else f"ETA {duration(s.eta_seconds)}"
        self.query_one("#progress-text", Static).update(f"{steps}  {epoch}  {eta}")

        # Plots are the costly part of a redraw: at most one rebuild per PLOT_SECONDS (the
        # final state of a finished run is always drawn).
        now = time.monotonic()
        if s.version != self._plotted_version and (now - self._plotted_at >= PLOT_SECONDS or s.finished):
            self._plotted_version = s.version
            self._plotted_at = now
            self._plot(s)
        elif s.version != self._plotted_version and self._plot_timer is None:
            self._plot_timer = self.set_timer(PLOT_SECONDS, self._replot)
        self.query_one("#stats", Static).update(self._stats_text(s))
        self._render_tail(s)
        box = self.query_one("#checkpoints", Static)
        cps = Text("checkpoints\n", style="bold")
        # the events list every checkpoint saved; save_total_limit (or a user) deletes old ones
        kept = [(step, path) for step, path in s.checkpoints if _on_disk(s.run_dir, path)]
        gone = len(s.checkpoints) - len(kept)
        names = [name if str(step) in name else f"step {step}: {name}"
                 for step, name in ((step, Path(path).name) for step, path in kept)]
        rows = max(TAIL_LINES, box.content_size.height) - 1 - (1 if gone else 0)
        if names:
            cps.append("\n".join(last_lines(names, box.content_size.width or None, rows)) + "\n")
        if gone:
            cps.append(f"{gone} deleted\n", style="dim")  # by save_total_limit or by hand
        if not s.checkpoints:
            cps.append("none yet", style="dim")
        box.update(cps)

    def _replot(self) -> None:
        self._plot_timer = None
        if self.snapshot is not None and self.snapshot.version != self._plotted_version:
            self._plotted_version = self.snapshot.version
            self._plotted_at = time.monotonic()
            self._plot(self.snapshot)

    def _plot(self, s: RunSnapshot) -> None:
        loss = self.query_one("#loss-plot", PlotextPlot)
        plt = loss.plt
        plt.clear_data()
        xs, ys = s.loss_series
        if xs:
            # No labels: a plotext legend sits inside a small plot and hides the first steps.
            plt.plot(list(xs), list(ys), marker="braille", color="gray")
            sx, sy = s.smooth_series
            plt.plot(list(sx), list(sy), marker="braille", color="cyan")
        exs, eys = s.eval_series
        if exs:
            plt.scatter(list(exs), list(eys), marker="o", color="orange")
        loss.refresh()
        lr = self.query_one("#lr-plot", PlotextPlot)
        lr.plt.clear_data()
        xs, ys = s.lr_series
        if xs:
            # Plot in units of the largest power of ten below the peak: short tick labels.
            import math

            peak = max(ys) or 1.0
            exp = math.floor(math.log10(peak)) if peak > 0 else 0
            lr.plt.title(f"learning rate (x1e{exp})")
            lr.plt.plot(list(xs), [y / 10**exp for y in ys], marker="braille")
        lr.refresh()

    def _stats_text(self, s: RunSnapshot) -> Text:
        t = Text()
        t.append("loss ", style="bold")
        t.append(f"{s.loss:.4f}" if s.loss is not None else "-")
        t.append("  eval ", style="bold")
        t.append(f"{s.eval_loss:.4f}" if s.eval_loss is not None else "-")
        t.append("  lr ", style="bold")
        t.append(f"{s.learning_rate:.2e}" if s.learning_rate is not None else "-")
        t.append("  speed ", style="bold")
        t.append(rate(s.tokens_per_second))
        t.append("  elapsed ", style="bold")
        t.append(duration(s.elapsed_seconds))
        t.append("\n")
        t.append_text(self._gpu_text())
        t.append("\n")
        t.append("torch peak memory ", style="bold")
        t.append(f"predicted {gib(s.predicted_peak_bytes, 2)}  measured {gib(s.measured_peak_bytes, 2)}")
        if s.predicted_peak_bytes and s.measured_peak_bytes:
            err = (s.measured_peak_bytes - s.predicted_peak_bytes) / s.predicted_peak_bytes
            t.append(f"  ({err:+.1%})")
        elif s.measured_peak_bytes is None:
            t.append("  (CUDA runs, after step 2)", style="dim")
        if len(s.gpu_rows) > 1:
            t.append("\n")
            t.append_text(self._ranks_text(s))
        return t  # wrapped at spaces by the widget (dashboard_screen.tcss), never cut in a word

    @staticmethod
    def _ranks_text(s: RunSnapshot) -> Text:
        """One compact entry per rank of a multi-GPU run: its peak allocated memory on CUDA,
        or the process's resident memory on the CPU (from each rank's `memory` events)."""
        t = Text("ranks", style="bold")
        for row in s.gpu_rows:
            peak = row.allocated_peak_bytes if row.allocated_peak_bytes is not None else row.rss_bytes
            what = "" if row.allocated_peak_bytes is not None else " rss"
            t.append(f"  {row.rank}:{row.device} {gib(peak, 1)}{what}")
        return t

    def _gpu_text(self) -> Text:
        t = Text("GPU ", style="bold")
        g = self.gpu_sample
        if g is None:
            t.append(self.gpu_note, style="dim")
        elif isinstance(g, str):
            t.append(g, style="dim")
        else:
            util, used, total = g.utilization_pct, g.memory_used_bytes, g.memory_total_bytes
            temp, power = g.temperature_c, g.power_w
            t.append(f"util {util if util is not None else '-'}%  mem {gib(used)}/{gib(total)}"
                     f"  temp {temp if temp is not None else '-'}°C  power "
                     f"{f'{power:.0f}' if power is not None else '-'} W")
        return t

    def _render_tail(self, s: RunSnapshot) -> None:
        tail = self.query_one("#tail", Static)
        height = max(TAIL_LINES, tail.content_size.height)
        t = Text()
        error = self.query_one("#error", Static)
        error.display = s.crashed
        if s.crashed:
            error.update(Text(f"run {s.phase}: {s.error or 'no error recorded (the process vanished)'}",
                              style="bold red"))
            t.append("train.log tail:\n", style="bold")
            source = s.log_lines
        elif self.show_log:
            t.append("train.log (l: events)\n", style="bold")
            source = s.log_lines
        else:
            t.append("events (l: train.log)\n", style="bold")
            source = s.event_lines
        # the newest lines, wrapped at spaces to the tail's width: never cut inside a word
        lines = last_lines(list(source), tail.content_size.width or None, height - 1)
        t.append("\n".join(lines) if lines else "(nothing yet)", style="" if lines else "dim")
        tail.update(t)

    # -- actions -------------------------------------------------------------------------
    def action_save(self) -> None:
        if self.snapshot is not None and self.snapshot.finished:
            self.notify("The run has finished: nothing to save.", severity="warning")
            return
        try:
            self.app.services.runs.request_save(self.run_dir)
        except Exception as exc:
            self.notify(f"save request failed: {exc}", severity="error")
            return
        self.notify("Checkpoint requested: it is written at the next step.")

    def action_stop(self) -> None:
        if self.snapshot is not None and self.snapshot.finished:
            self.notify("The run has already finished.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.app.services.runs.request_stop(self.run_dir)
            except Exception as exc:
                self.notify(f"stop request failed: {exc}", severity="error")
                return
            self.notify("Stop requested: the run checkpoints, then exits.")

        self.app.push_screen(ConfirmDialog(f"Stop run {self.run_dir.name}?\n"
                                           "It saves a checkpoint, then exits; "
                                           "`tuneplan resume` continues it."), answered)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "evaluate":  # shown in the footer only once the run is done (or stopped)
            return self.snapshot is not None and self.snapshot.phase in ("done", "stopped")
        return True

    def action_evaluate(self) -> None:
        s = self.snapshot
        if s is None or s.phase not in ("done", "stopped"):
            self.notify("Evaluate a run once it is done.", severity="warning")
            return
        if self._eval_running:
            self.notify("The evaluation is running: its result shows here.", severity="warning")
            return
        if not self._eval_exists:
            self.run_eval(False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_eval(True)

        self.app.push_screen(ConfirmDialog(f"Evaluate {self.run_dir.name} again?\n"
                                           "The new results replace eval.json."), answered)

    def action_toggle_tail(self) -> None:
        self.show_log = not self.show_log
        if self.snapshot is not None:
            self._render_tail(self.snapshot)

    def action_detach(self) -> None:
        self._stop_event.set()
        self.app.exit(result=("detached", self.run_dir))

    def action_help(self) -> None:
        self.app.push_screen(HelpDialog("Dashboard keys", HELP))


def _on_disk(run_dir: str, path: str) -> bool:
    """Whether a checkpoint the events name is still there (its path, or its name under the
    run's `checkpoints/` folder when the run folder was moved)."""
    p = Path(path)
    return p.is_dir() or (Path(run_dir) / "checkpoints" / p.name).is_dir()
