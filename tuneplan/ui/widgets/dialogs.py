"""Small modal dialogs: a yes/no confirmation and the key help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmDialog(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True on `y`, False on `n`/Esc."""

    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical {
        width: 60; height: auto; border: thick $error; background: $surface; padding: 1 2;
    }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            yield Static("[b]y[/b] yes    [b]n[/b] / [b]Esc[/b] no", id="keys")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class HelpDialog(ModalScreen[None]):
    """Lists keys of the screen that opened it; any of Esc/?/q closes it."""

    DEFAULT_CSS = """
    HelpDialog { align: center middle; }
    HelpDialog > Vertical {
        width: 64; height: auto; max-height: 22; border: thick $accent; background: $surface;
        padding: 1 2;
    }
    """
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close"),
        Binding("q", "close", "Close"),
    ]

    def __init__(self, title: str, lines: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines

    def compose(self) -> ComposeResult:
        from rich.markup import escape

        body = "\n".join(f"[b]{escape(key):>8}[/b]  {escape(what)}" for key, what in self.lines)
        with Vertical():
            yield Static(f"[b]{self.title_text}[/b]\n")
            yield Static(body)
            yield Static("\n[dim]Esc / ? closes[/dim]")

    def action_close(self) -> None:
        self.dismiss(None)
