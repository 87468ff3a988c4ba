"""Step 3: the dataset: detected format, three samples as chats, count, token lengths."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Input, LoadingIndicator, Static

from tuneplan.ui.app_base import WizardScreen
from tuneplan.errors import UserError
from tuneplan.ui.messages import DatasetChosen
from tuneplan.ui.widgets.dialogs import HelpDialog
from tuneplan.ui.widgets.step_bar import StepBar


class DatasetPreviewed(Message):
    """The preview worker finished: `preview` on success, `error` (one line) otherwise."""

    def __init__(self, source: str, preview: Any = None, error: str | None = None) -> None:
        super().__init__()
        self.source = source
        self.preview = preview
        self.error = error


def _sample_dataset() -> str:
    try:
        from tuneplan.data import SAMPLE_CHAT

        return str(SAMPLE_CHAT)
    except Exception:
        return ""


class DatasetScreen(WizardScreen[None]):
    """Enter previews the dataset; Enter again continues; Ctrl+S skips (plan without it)."""

    CSS_PATH = "dataset_screen.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+s", "skip", "Skip"),
        Binding("pagedown", "scroll(1)", "Scroll", show=False),
        Binding("pageup", "scroll(-1)", "Scroll", show=False),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, model: Any = None) -> None:
        super().__init__()
        self.model = model
        self.preview: Any = None
        self._previewed_source: str | None = None

    def compose(self) -> ComposeResult:
        yield StepBar(3)
        yield Static("Dataset: a local .jsonl/.json/.csv/.parquet file or a Hub dataset id", id="help")
        yield Input(value=_sample_dataset(), placeholder="path/to/data.jsonl or org/dataset", id="dataset-input")
        yield LoadingIndicator(id="spinner")
        with VerticalScroll(id="body", can_focus=False):
            yield Static(id="summary")
            with Horizontal(id="preview"):
                yield Static(id="samples")
                yield Static(id="histogram")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#spinner").display = False
        self.query_one("#dataset-input", Input).focus()

    @on(Input.Changed, "#dataset-input")
    def _typed(self, event: Input.Changed) -> None:
        if self._previewed_source is not None and event.value.strip() != self._previewed_source:
            self._previewed_source = None
            self.preview = None

    @on(Input.Submitted, "#dataset-input")
    def _submitted(self, event: Input.Submitted) -> None:
        source = event.value.strip()
        if self.preview is not None and source == self._previewed_source:
            self.post_message(DatasetChosen(self.preview))
            return
        if not source:
            return
        self.query_one("#spinner").display = True
        self.query_one("#summary", Static).update(Text(f"Reading {source}...", style="dim"))
        self.query_one("#samples", Static).update("")
        self.query_one("#histogram", Static).update("")
        self.load_preview(source)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def load_preview(self, source: str) -> None:
        from tuneplan.app import preview_dataset

        services = self.app.services
        tokenizer_source = getattr(self.model, "tokenizer_source", None)
        try:
            preview = preview_dataset(source, model_source=tokenizer_source, hub=services.hub_files)
        except UserError as exc:
            self.post_message(DatasetPreviewed(source, error=str(exc)))
        except Exception as exc:
            self.post_message(DatasetPreviewed(source, error=f"{source}: {type(exc).__name__}: {exc}".splitlines()[0]))
        else:
            self.post_message(DatasetPreviewed(source, preview=preview))

    @on(DatasetPreviewed)
    def _previewed(self, message: DatasetPreviewed) -> None:
        self.query_one("#spinner").display = False
        summary = self.query_one("#summary", Static)
        if message.error:
            self.preview = None
            self._previewed_source = None
            summary.update(Text(message.error, style="bold red"))
            return
        p = message.preview
        self.preview = p
        self._previewed_source = message.source
        n = f"{p.num_examples:,}" if p.num_examples is not None else "unknown"
        t = Text()
        t.append("format ", style="bold")
        t.append(p.format)
        t.append("   examples ", style="bold")
        t.append(n + ("" if p.count_exact else " (at least)"))
        t.append("   columns ", style="bold")
        t.append(", ".join(p.columns))
        for note in p.notes:
            t.append(f"\n{note}", style="dim")
        t.append("\nEnter again to continue (Ctrl+S: plan without a dataset)", style="bold")
        summary.update(t)
        self.query_one("#samples", Static).update(self._samples_text(p))
        self.query_one("#histogram", Static).update(self._histogram_text(p))

    def _samples_text(self, p: Any) -> Text:
        t = Text()
        for i, sample in enumerate(p.samples, 1):
            t.append(f"sample {i}\n", style="bold underline")
            for role, content in sample:
                one_line = " ".join(content.split())
                if len(one_line) > 120:
                    one_line = one_line[:117] + "..."
                t.append(f"{role:>9}: ", style="bold")
                t.append(one_line + "\n")
        return t

    def _histogram_text(self, p: Any) -> Text:
        from tuneplan.app import format_histogram

        s = p.tokens
        t = Text()
        if s is None:
            return t
        t.append("tokens", style="bold underline")
        t.append(" exact\n" if s.exact else " APPROXIMATE\n", style="bold" if s.exact else "bold yellow")
        t.append(f"p50 {s.p50}  p90 {s.p90}  p99 {s.p99}\nmax {s.max}  mean {s.mean:.0f}  "
                 f"total {s.total_tokens:,}\n")
        t.append("truncated at seq len\n", style="bold")
        t.append("  ".join(f"{n}:{share:.0%}" for n, share in s.truncated_share) + "\n")
        for line in format_histogram(s, width=14):
            t.append(line + "\n")
        t.append(f"counted with {s.method}", style="dim")
        return t

    def action_scroll(self, direction: int) -> None:
        body = self.query_one("#body", VerticalScroll)
        body.scroll_page_down() if direction > 0 else body.scroll_page_up()

    def action_skip(self) -> None:
        self.post_message(DatasetChosen(None))

    def action_help(self) -> None:
        self.app.push_screen(HelpDialog("Dataset", [
            ("Enter", "preview the dataset; Enter again continues"),
            ("Ctrl+S", "skip: plan without dataset statistics"),
            ("PgUp/PgDn", "scroll the preview"), ("Esc", "back"),
        ]))
