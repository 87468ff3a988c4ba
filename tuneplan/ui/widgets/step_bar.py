"""The wizard's breadcrumb: `1 Hardware > 2 Model > ...` with the current step marked."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

STEPS = ("Hardware", "Model", "Dataset", "Plan", "Review")


class StepBar(Static):
    """One line naming the steps; the current one is bold and bracketed (no colour needed)."""

    DEFAULT_CSS = """
    StepBar {
        height: 1;
        background: $panel;
        padding: 0 1;
    }
    """

    def __init__(self, current: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = current

    def render(self) -> Text:
        text = Text()
        for i, name in enumerate(STEPS, 1):
            if i > 1:
                text.append(" > ", style="dim")
            label = f"{i} {name}"
            if i == self.current:
                text.append(f"[{label}]", style="bold reverse")
            elif i < self.current:
                text.append(label)
            else:
                text.append(label, style="dim")
        return text
