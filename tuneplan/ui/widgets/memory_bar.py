"""A stacked bar of memory components against a card's capacity, with a text legend.

Every component has its own glyph as well as its own colour, so the bar still reads on a
no-colour terminal; the legend repeats glyph, name and GiB.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

GiB = 1024**3

# component -> (glyph, colour, short label); order = display order
STYLE = {
    "runtime_overhead": ("▒", "grey50", "runtime"),
    "quantized_weights": ("█", "dodger_blue2", "4-bit W"),
    "unquantized_weights": ("▓", "steel_blue1", "16-bit W"),
    "adapter_weights": ("≡", "green3", "adapters"),
    "gradients": ("▚", "yellow3", "grads"),
    "optimizer_states": ("▞", "orange3", "optimizer"),
    "saved_activations": ("▆", "medium_purple2", "activations"),
    "transient_peak": ("▲", "magenta", "transient"),
    "allocator_overhead": ("░", "grey62", "allocator"),
}
FREE = ("·", "grey35")


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.1f}"


class MemoryBar(Widget):
    """`components` (name -> bytes) stacked against `capacity` bytes. `usable` (bytes) marks
    where the safety margin starts; `over` is drawn in red with the overflow named."""

    DEFAULT_CSS = """
    MemoryBar {
        height: auto;
        min-height: 3;
    }
    """

    data: reactive[tuple] = reactive(tuple, layout=True)

    def set_memory(self, components: dict[str, int], total: int, capacity: int, usable: int | None = None) -> None:
        self.data = (tuple(components.items()), total, capacity, usable)

    def render(self) -> Text:
        if not self.data:
            return Text("memory: -")
        items, total, capacity, usable = self.data
        width = max(10, self.size.width - 2)
        scale = max(capacity, total) or 1
        bar = Text("[")
        used_cells = 0
        for name, nbytes in items:
            if nbytes <= 0:
                continue
            glyph, colour, _ = STYLE.get(name, ("#", "white", name))
            cells = round(width * nbytes / scale)
            if cells == 0 and nbytes > 0.004 * scale:
                cells = 1
            cells = min(cells, width - used_cells)
            bar.append(glyph * cells, style=colour)
            used_cells += cells
        cap_cell = round(width * capacity / scale)
        if used_cells < cap_cell:
            margin_cell = round(width * usable / scale) if usable else cap_cell
            free1 = max(0, margin_cell - used_cells)
            bar.append(FREE[0] * free1, style=FREE[1])
            bar.append("x" * max(0, cap_cell - used_cells - free1), style="dim")
            used_cells = cap_cell
        bar.append(" " * max(0, width - used_cells))
        bar.append("]")
        if total > capacity:
            # mark the card's edge inside an overflowing bar
            pos = 1 + min(width - 1, cap_cell)
            bar.stylize("bold red", pos, len(bar) - 1)
        lines = Text()
        lines.append_text(bar)
        lines.append("\n")
        fits = total <= (usable if usable else capacity)
        head = f"{gib(total)} of {gib(capacity)} GiB"
        if total > capacity:
            lines.append(f"{head}  OVER by {gib(total - capacity)} GiB", style="bold red")
        elif not fits:
            lines.append(f"{head}  inside the safety margin: {gib(capacity - total)} GiB left", style="bold yellow")
        else:
            lines.append(f"{head}  headroom {gib(capacity - total)} GiB", style="bold green")
        lines.append("   (x = safety margin)" if usable and usable < capacity else "", style="dim")
        lines.append("\n")
        legend = Text()
        for name, nbytes in items:
            if nbytes <= 0:
                continue
            glyph, colour, label = STYLE.get(name, ("#", "white", name))
            legend.append(glyph, style=colour)
            legend.append(f"{label} {gib(nbytes)} ")
        lines.append_text(legend)
        return lines
