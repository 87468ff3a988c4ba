"""Step 1: the GPUs NVML finds, or a dry-run target (catalog card or memory size)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from tuneplan.ui.app_base import WizardScreen
from tuneplan.errors import UserError
from tuneplan.services.machine import CPU_DTYPE
from tuneplan.ui.formatting import gib
from tuneplan.ui.messages import TargetChosen
from tuneplan.ui.target import Target, catalog_matches, cpu_target, dry_run_target
from tuneplan.ui.widgets.dialogs import HelpDialog
from tuneplan.ui.widgets.step_bar import StepBar


class GpusProbed(Message):
    """The NVML probe finished (in a thread worker)."""

    def __init__(self, gpus: list[Any], status: str) -> None:
        super().__init__()
        self.gpus = gpus
        self.status = status


CPU_OPTION = "this-machine-cpu"
"""The card list's id of this machine's CPU (offered when NVML finds no GPU)."""
CPU_LABEL = "this machine (CPU)"


class HardwareScreen(WizardScreen[None]):
    """Pick a detected GPU, or plan for a card you don't have (dry run)."""

    CSS_PATH = "hardware_screen.tcss"
    BINDINGS = [
        Binding("ctrl+d", "dry_run", "Dry run"),
        Binding("escape", "app.quit", "Quit"),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, *, dry_run: bool = False) -> None:
        super().__init__()
        self.force_dry_run = dry_run
        self.gpus: list[Any] = []
        self.cpu: Target | None = None
        """This machine's CPU, offered first when NVML finds no GPU."""

    def compose(self) -> ComposeResult:
        yield StepBar(1)
        yield Static("Looking for NVIDIA GPUs...", id="status")
        yield DataTable(id="gpus", cursor_type="row", zebra_stripes=True)
        with Vertical(id="dry"):
            yield Static("[b]Dry run[/b]: type a card (3060, a100-80, H100 SXM) or a memory size (24GiB)",
                         id="dry-help")
            yield Input(placeholder="card or memory size, Enter to choose", id="card-input")
            yield OptionList(id="cards")
        yield Static(id="error")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#gpus", DataTable)
        table.add_columns("#", "GPU", "total", "free", "others hold", "bf16")
        table.display = False
        self.query_one("#dry").display = False
        self._fill_cards("")
        self.probe_gpus()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def probe_gpus(self) -> None:
        probe = self.app.services.gpu
        gpus = probe.probe()
        self.post_message(GpusProbed(gpus, probe.status() if not gpus else "ok"))

    @on(GpusProbed)
    def _show_gpus(self, message: GpusProbed) -> None:
        self.gpus = message.gpus
        self.app.state.local_gpus = len(self.gpus)
        status = self.query_one("#status", Static)
        if not self.gpus:
            self.cpu = cpu_target()
            status.update(Text.assemble(("No NVIDIA GPU here: ", "bold"), message.status,
                                        "\nEnter plans for this machine's CPU (tiny models: tuneplan:tiny), or "
                                        "type a card you will rent or own (dry run)."))
            self._fill_cards(self.query_one("#card-input", Input).value)
            self._open_dry_run()
            return
        g0 = self.gpus[0]
        status.update(Text.assemble((f"{len(self.gpus)} GPU(s) found", "bold"),
                                    f"  driver {g0.driver_version or '-'}  CUDA {g0.cuda_version or '-'}",
                                    "\nEnter plans for the highlighted GPU; Ctrl+D plans for another card."))
        table = self.query_one("#gpus", DataTable)
        table.display = True
        for g in self.gpus:
            others = "-" if g.other_processes_bytes is None else (
                f"{gib(g.other_processes_bytes)} ({len(g.other_processes)} proc)" if g.other_processes else "none")
            table.add_row(str(g.index), g.name, gib(g.total_bytes), gib(g.free_bytes), others,
                          "yes" if g.bf16 else "no (fp16)", key=str(g.index))
        if self.force_dry_run:
            self._open_dry_run()
        else:
            table.focus()

    def _open_dry_run(self) -> None:
        self.query_one("#dry").display = True
        self.query_one("#card-input", Input).focus()

    def _fill_cards(self, query: str) -> None:
        cards = self.query_one("#cards", OptionList)
        cards.clear_options()
        if self.cpu is not None and query.strip().lower() in CPU_LABEL.lower():  # empty, "cpu", "this"...
            cards.add_option(Option(f"{CPU_LABEL:<32} {gib(self.cpu.free_bytes)} RAM free, {CPU_DTYPE}",
                                    id=CPU_OPTION))
        for g in catalog_matches(query, limit=30):
            bf16 = "" if g.bf16 else "  no bf16"
            price = f"${g.price_per_hour:.2f}/h" if g.price_per_hour is not None else ""
            cards.add_option(Option(f"{g.name:<32} {g.memory_gib():5.1f} GiB {price:>8}{bf16}", id=g.key))
        if cards.option_count:
            cards.highlighted = 0

    @on(Input.Changed, "#card-input")
    def _search_cards(self, event: Input.Changed) -> None:
        self.query_one("#error", Static).update("")
        self._fill_cards(event.value)

    def on_key(self, event) -> None:
        # Up/Down in the search box move through the card list (no mouse, no Tab needed).
        if self.focused is self.query_one("#card-input", Input) and event.key in ("up", "down"):
            cards = self.query_one("#cards", OptionList)
            if event.key == "down":
                cards.action_cursor_down()
            else:
                cards.action_cursor_up()
            event.stop()

    @on(Input.Submitted, "#card-input")
    def _choose_typed(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        cards = self.query_one("#cards", OptionList)
        from tuneplan.ui.target import parse_memory

        try:
            if parse_memory(text) is None and cards.highlighted is not None and cards.option_count:
                text = cards.get_option_at_index(cards.highlighted).id or text  # every card has an id
            target = self.cpu if (text == CPU_OPTION and self.cpu is not None) else dry_run_target(text)
        except UserError as exc:
            self.query_one("#error", Static).update(Text(str(exc), style="bold red"))
            return
        self.post_message(TargetChosen(target))

    @on(OptionList.OptionSelected, "#cards")
    def _choose_card(self, event: OptionList.OptionSelected) -> None:
        if event.option.id == CPU_OPTION and self.cpu is not None:
            self.post_message(TargetChosen(self.cpu))
            return
        if event.option.id is not None:  # every card is added with its catalog key as id
            self.post_message(TargetChosen(dry_run_target(event.option.id)))

    @on(DataTable.RowSelected, "#gpus")
    def _choose_gpu(self, event: DataTable.RowSelected) -> None:
        g = next(x for x in self.gpus if str(x.index) == event.row_key.value)
        self.post_message(TargetChosen(Target(gpu=g.as_planner_gpu(), label=g.name, free_bytes=g.free_bytes,
                                              index=g.index)))

    def action_dry_run(self) -> None:
        self._open_dry_run()

    def action_help(self) -> None:
        self.app.push_screen(HelpDialog("Hardware", [
            ("Enter", "plan for the highlighted GPU / card (no GPU here: this machine's CPU first)"),
            ("Up/Down", "move"), ("Ctrl+D", "dry run: plan for a card you don't have"),
            ("Esc", "quit"),
        ]))
