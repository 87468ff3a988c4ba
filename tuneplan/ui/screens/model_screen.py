"""Step 2: the model: catalog search as you type, a Hub id, or a local folder."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Input, LoadingIndicator, OptionList, Static
from textual.widgets.option_list import Option

from tuneplan.ui.app_base import WizardScreen
from tuneplan.errors import UserError
from tuneplan.ui.formatting import count
from tuneplan.ui.messages import ModelChosen
from tuneplan.ui.widgets.dialogs import HelpDialog
from tuneplan.ui.widgets.step_bar import StepBar


class ModelResolved(Message):
    """The resolve worker finished: `model` on success, `error` (one line) otherwise."""

    def __init__(self, text: str, model: Any = None, error: str | None = None) -> None:
        super().__init__()
        self.text = text
        self.model = model
        self.error = error


class ModelScreen(WizardScreen[None]):
    """Type to search the catalog; Enter looks the model up, Enter again continues."""

    CSS_PATH = "model_screen.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None
        self._resolved_text: str | None = None

    def compose(self) -> ComposeResult:
        yield StepBar(2)
        yield Static("Model: a catalog name, a Hub id (org/name: fetches config.json only) "
                     "or a local folder with config.json", id="help")
        yield Input(placeholder="e.g. llama-3.1-8b, Qwen/Qwen2.5-7B, ./my-model", id="model-input")
        yield OptionList(id="hits")
        yield LoadingIndicator(id="spinner")
        yield Static(id="details")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#spinner").display = False
        self._search("")
        self.query_one("#model-input", Input).focus()

    # -- search as you type (pure catalog: fast enough to run inline) --------------------
    def _search(self, query: str) -> None:
        hits = self.query_one("#hits", OptionList)
        hits.clear_options()
        for h in self.app.services.models.search(query, limit=30):
            gate = " gated" if h.gated else ""
            hits.add_option(Option(f"{h.name:<24} {count(h.parameters):>7}  {h.license}{gate}", id=h.name))
        if hits.option_count:
            hits.highlighted = 0

    @on(Input.Changed, "#model-input")
    def _typed(self, event: Input.Changed) -> None:
        self._search(event.value)
        if self._resolved_text is not None and event.value.strip() != self._resolved_text:
            self._resolved_text = None
            self.model = None
            self.query_one("#details", Static).update("")

    def on_key(self, event) -> None:
        if self.focused is self.query_one("#model-input", Input) and event.key in ("up", "down"):
            hits = self.query_one("#hits", OptionList)
            hits.action_cursor_down() if event.key == "down" else hits.action_cursor_up()
            event.stop()

    def _looks_like_catalog_query(self, text: str) -> bool:
        return bool(text) and "/" not in text and not text.startswith((".", "~"))

    @on(Input.Submitted, "#model-input")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if self.model is not None and text == self._resolved_text:
            self.post_message(ModelChosen(self.model))
            return
        hits = self.query_one("#hits", OptionList)
        if (not text or self._looks_like_catalog_query(text)) and hits.highlighted is not None and hits.option_count:
            if not self.app.services.models.is_catalog_name(text):  # partial name: take the highlighted hit
                text = hits.get_option_at_index(hits.highlighted).id or text  # every hit has an id
                self.query_one("#model-input", Input).value = text
        if not text:
            return
        self._start_resolve(text)

    @on(OptionList.OptionSelected, "#hits")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        picked = event.option.id
        if picked is None:  # every hit is added with its model name as id
            return
        self.query_one("#model-input", Input).value = picked
        self._start_resolve(picked)

    def _start_resolve(self, text: str) -> None:
        self.query_one("#spinner").display = True
        self.query_one("#details", Static).update(Text(f"Looking up {text}...", style="dim"))
        self.resolve_model(text)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def resolve_model(self, text: str) -> None:
        try:
            model = self.app.services.models.resolve(text)
        except UserError as exc:
            self.post_message(ModelResolved(text, error=str(exc)))
        except Exception as exc:  # never a traceback on screen: one line that names it
            self.post_message(ModelResolved(text, error=f"{text}: {type(exc).__name__}: {exc}".splitlines()[0]))
        else:
            self.post_message(ModelResolved(text, model=model))

    @on(ModelResolved)
    def _resolved(self, message: ModelResolved) -> None:
        self.query_one("#spinner").display = False
        details = self.query_one("#details", Static)
        if message.error:
            self.model = None
            self._resolved_text = None
            details.update(Text(message.error, style="bold red"))
            return
        m = message.model
        self.model = m
        self._resolved_text = message.text
        t = Text()
        t.append(f"{m.name}", style="bold")
        t.append(f"  ({m.kind})\n")
        t.append(f"parameters {count(m.parameters)} ({m.parameters:,})  architecture {m.architecture}  "
                 f"context {m.context_length:,}\n")
        lic = m.license or "unknown"
        gate = {True: "gated (a Hub token with access is needed to train)", False: "not gated",
                None: "gating unknown"}[m.gated]
        t.append(f"licence {lic}, {gate}\n")
        for note in m.notes:
            t.append(f"{note}\n", style="dim")
        t.append("Enter again to continue", style="bold")
        details.update(t)

    def action_help(self) -> None:
        self.app.push_screen(HelpDialog("Model", [
            ("type", "search the catalog"), ("Up/Down", "move through matches"),
            ("Enter", "look up the model; Enter again continues"), ("Esc", "back"),
        ]))
