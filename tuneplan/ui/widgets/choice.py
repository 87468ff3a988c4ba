"""A keyboard-first value cycler: `< value >`, Left/Right (or Space) change it."""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class Choice(Widget, can_focus=True):
    """Shows one of `options`; Left/Right cycle. Posts `Choice.Changed`."""

    DEFAULT_CSS = """
    Choice { height: 1; width: 1fr; }
    Choice:focus { text-style: bold reverse; }
    Choice:disabled { color: $text-disabled; }
    """
    BINDINGS = [
        Binding("left", "step(-1)", "Prev", show=False),
        Binding("right", "step(1)", "Next", show=False),
        Binding("space", "step(1)", "Next", show=False),
    ]

    index: reactive[int] = reactive(0)
    unused: reactive[str | None] = reactive(None)
    """Shown instead of the value while the row does not apply (set with `disabled`)."""

    class Changed(Message):
        def __init__(self, choice: "Choice", value: Any) -> None:
            super().__init__()
            self.choice = choice
            self.value = value

        @property
        def control(self) -> "Choice":
            return self.choice

    def __init__(self, options: Sequence[tuple[str, Any]], value: Any = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.options = list(options)
        self.set_reactive(Choice.index, self._index_of(value))

    def _index_of(self, value: Any) -> int:
        for i, (_, v) in enumerate(self.options):
            if v == value:
                return i
        return 0

    @property
    def value(self) -> Any:
        return self.options[self.index][1]

    def set_value(self, value: Any) -> None:
        """Set without posting Changed (the screen is syncing from a new plan)."""
        self.set_reactive(Choice.index, self._index_of(value))
        self.refresh()

    def render(self) -> Text:
        if self.unused is not None:
            return Text(self.unused, style="dim italic")
        return Text(f"< {self.options[self.index][0]} >")

    def action_step(self, delta: int) -> None:
        self.index = (self.index + delta) % len(self.options)
        self.post_message(self.Changed(self, self.value))
