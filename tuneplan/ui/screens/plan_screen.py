"""Step 4: the plan: memory bar against the card, speed/time/cost, reasons, alternatives,
and every knob editable in place with an instant re-estimate."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, Label, Static

from planner.setup import ALL_LINEAR, ATTENTION_TARGETS
from tuneplan.knobs import COUNT, KNOBS, LONGEST, LORA, SCREEN_KNOBS, TARGETS, Knob, PartialSetup, accumulation
from tuneplan.ui.app_base import WizardScreen
from tuneplan.errors import UserError
from tuneplan.ui.formatting import count, duration, gib, money, rate
from tuneplan.ui.messages import PlanAccepted
from tuneplan.ui.widgets.choice import Choice
from tuneplan.ui.widgets.dialogs import ConfirmDialog, HelpDialog
from tuneplan.ui.widgets.memory_bar import MemoryBar
from tuneplan.ui.widgets.step_bar import StepBar

# the knob rows: which, in what order, their labels, help and options all come from the
# registry (`tuneplan.knobs.SCREEN_KNOBS`); whole numbers are typed, the other knobs are chosen
# with Left/Right among the registry's options
KNOB_HELP = {**{k.name: k.screen_help for k in KNOBS if k.screen_help},
             "alternatives": "alternatives: Enter uses the highlighted configuration"}
INT_KNOBS = {k.name: k.screen for k in SCREEN_KNOBS if k.kind == COUNT}
LONGEST_KNOBS = {k.name for k in SCREEN_KNOBS if k.longest}
_LONGEST_INPUT = "|".join([r"[0-9]*"] + [LONGEST[:i] for i in range(1, len(LONGEST) + 1)])
"""What a `longest` knob's field takes while typing: digits, or a prefix of `max`."""
NOT_USED = "not used (full FT)"
"""What a LoRA row shows under full fine-tuning: it stays in place, greyed and skipped by the
focus, so the rows never jump when the method changes (and no edit there can do nothing)."""


class PlanComputed(Message):
    """The solver worker finished: `plan` on success, `error` (one line) otherwise."""

    def __init__(self, plan: Any = None, error: str | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.error = error


def targets_value(targets: Any) -> str:
    if isinstance(targets, str):
        return targets
    if tuple(targets) == ATTENTION_TARGETS:
        return "attention"
    return ",".join(targets)


def shown_value(knob: Knob, value: Any) -> Any:
    """The option of `knob`'s row that a setup value shows as: the value itself, but LoRA
    targets show as their group, `attention` for the group or the q/k/v/o projections it
    resolves to, all-linear for any other module list (the row has no option for one)."""
    if knob.kind == TARGETS:
        return "attention" if targets_value(value) == "attention" else ALL_LINEAR
    return value


class PlanScreen(WizardScreen[None]):
    """The solver's choice; edit any knob and the estimate follows on each keypress."""

    CSS_PATH = "plan_screen.tcss"
    BINDINGS = [
        Binding("ctrl+n", "accept", "Review"),
        Binding("enter", "accept", "Review", show=False),  # on a choice knob (Inputs submit: same)
        Binding("ctrl+r", "resolve", "Re-plan"),
        # not Ctrl+U: in every field that clears the text (Textual's Input); undo asks first
        Binding("ctrl+z", "reset", "Undo edits"),
        # before the scrolling body's own Up/Down (which would scroll instead of moving)
        Binding("up", "move(-1)", "Previous knob", show=False, priority=True),
        Binding("down", "move(1)", "Next knob", show=False, priority=True),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f1", "help", "Help"),
        Binding("pagedown", "scroll(1)", "Scroll", show=False),
        Binding("pageup", "scroll(-1)", "Scroll", show=False),
    ]

    def __init__(self, target: Any, model: Any, dataset: Any) -> None:
        super().__init__()
        self.target = target
        self.model = model
        self.dataset = dataset
        self.solved: Any = None
        """The solver's plan (what Ctrl+Z returns to)."""
        self.plan: Any = None
        """What is shown: the solver's plan or an estimate of edited knobs."""
        self.fixed: dict[str, Any] = {}
        """Knobs the user edited (kept fixed by Ctrl+R)."""

    def compose(self) -> ComposeResult:
        yield StepBar(4)
        yield Static(id="title")
        with VerticalScroll(id="body", can_focus=False):
            yield MemoryBar(id="memory")
            with Horizontal(id="middle"):
                with Grid(id="knobs"):
                    for knob in SCREEN_KNOBS:  # each row's id is its knob, the `TrainSetup` field
                        yield Label(knob.screen or knob.name)
                        if knob.kind == COUNT and knob.longest:
                            # a number, or `max`: the longest that fits (--seq-len max)
                            yield Input(restrict=_LONGEST_INPUT, id=knob.name, compact=True)
                        elif knob.kind == COUNT:
                            yield Input(type="integer", id=knob.name, compact=True)
                        else:
                            yield Choice(knob.screen_options(), id=knob.name)
                yield Static(id="summary")
            yield Static(id="knob-help")
            yield Static(id="reasons")
            yield DataTable(id="alternatives", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#alternatives", DataTable)
        table.add_columns("alternative", "method", "seq", "mb x acc", "ckpt", "memory", "speed")
        self.query_one("#title", Static).update(Text("Planning...", style="dim"))
        self.solve({})

    def on_descendant_focus(self, event) -> None:
        hint = KNOB_HELP.get(event.widget.id or "", "")
        self.query_one("#knob-help", Static).update(Text(f"> {hint}" if hint else "", style="italic"))

    # -- the solver runs in a worker (tens of ms for 70B; keeps the first paint instant) --
    @work(thread=True, exclusive=True, exit_on_error=False, group="solve")
    def solve(self, fixed: Any) -> None:
        try:
            plan = self.app.services.planning.plan(self.model, self.target, self.dataset, fixed)
        except UserError as exc:
            self.post_message(PlanComputed(error=str(exc)))
        except Exception as exc:
            self.post_message(PlanComputed(error=f"planner: {type(exc).__name__}: {exc}".splitlines()[0]))
        else:
            self.post_message(PlanComputed(plan=plan))

    @on(PlanComputed)
    def _computed(self, message: PlanComputed) -> None:
        if message.error:
            self.query_one("#title", Static).update(Text(message.error, style="bold red"))
            return
        self.solved = message.plan
        self._show(message.plan, sync_knobs=True)
        if self.focused is None:
            self.query_one(f"#{SCREEN_KNOBS[0].name}").focus()

    # -- editing: estimate synchronously (one estimate is well under a millisecond) -------
    def _edit(self, **changes: Any) -> None:
        if self.plan is None:
            return
        setup = replace(self.plan.setup, **changes)
        try:
            plan = self.app.services.planning.estimate(self.model, self.target, self.dataset, setup)
        except UserError as exc:
            self.query_one("#reasons", Static).update(Text(str(exc), style="bold red"))
            return
        except Exception as exc:  # an estimate must never take the app down: say what failed
            self.query_one("#reasons", Static).update(
                Text(f"cannot estimate this configuration: {type(exc).__name__}: {exc}".splitlines()[0],
                     style="bold red"))
            return
        self.fixed.update(changes)
        if not plan.alternatives and self.solved is not None:
            plan = replace(plan, alternatives=self.solved.alternatives)
        self._show(plan, sync_knobs=False)

    @on(Input.Changed)
    def _int_changed(self, event: Input.Changed) -> None:
        knob = event.input.id
        if knob not in INT_KNOBS or self.plan is None:
            return
        if knob in LONGEST_KNOBS and event.value.strip().lower() == LONGEST:
            # the longest that fits, the other edited knobs held: the solver searches it
            self.fixed[knob] = LONGEST
            self.query_one("#title", Static).update(Text(f"Searching the longest {INT_KNOBS[knob]} that fits...",
                                                         style="dim"))
            self.solve(PartialSetup(dict(self.fixed)))
            return
        try:
            value = int(event.value)
        except ValueError:
            return
        if value <= 0:
            self.query_one("#reasons", Static).update(Text(f"{INT_KNOBS[knob]} must be > 0 (got {value})",
                                                           style="bold red"))
            return
        if getattr(self.plan.setup, knob) != value:
            changes = {knob: value}
            if knob == "micro_batch":  # keep the effective batch: the accumulation follows
                s = self.plan.setup
                changes["grad_accum"] = accumulation(s.micro_batch * s.grad_accum, value)
            self._edit(**changes)
            if "grad_accum" in changes:
                self._sync_input("grad_accum", self.plan.setup.grad_accum)

    @on(Input.Submitted)
    def _int_submitted(self, event: Input.Submitted) -> None:
        self.action_accept()  # Enter moves on, as on every screen (Tab moves between knobs)

    @on(Choice.Changed)
    def _choice_changed(self, event: Choice.Changed) -> None:
        knob, value = event.choice.id, event.value
        if knob is None:  # every knob's Choice has the knob's name as id
            return
        # `attention` stays the group the planner resolves per model (phi-3: qkv_proj, o_proj)
        # Only this knob changes (the optimizer the solver would pair with it comes from Ctrl+R).
        self._edit(**{knob: value})
        if knob == "method" and self.plan is not None:
            self._sync_used(self.plan.setup)

    @on(DataTable.RowSelected, "#alternatives")
    def _use_alternative(self, event: DataTable.RowSelected) -> None:
        alt = self.plan.alternatives[event.cursor_row]
        changes = {f: getattr(alt.setup, f) for f in alt.setup.__dataclass_fields__
                   if getattr(alt.setup, f) != getattr(self.plan.setup, f)}
        self._edit(**changes)
        self._sync_knobs(self.plan.setup)

    # -- rendering -----------------------------------------------------------------------
    def _show(self, plan: Any, *, sync_knobs: bool) -> None:
        self.plan = plan
        s = plan.setup
        title = Text(" ")
        if plan.fits:
            title.append(" FITS ", style="bold reverse green")
        elif plan.memory.device_bytes > plan.capacity_bytes:
            over = plan.memory.device_bytes - plan.capacity_bytes
            title.append(f" DOES NOT FIT: over by {gib(over)} ", style="bold reverse red")
        else:
            over = plan.memory.device_bytes - plan.budget_bytes
            title.append(f" TOO TIGHT: {gib(over)} into the safety margin ", style="bold reverse red")
        if not plan.solver:
            title.append(" edited", style="bold yellow")
        gpus = f"{s.num_gpus} x " if s.num_gpus > 1 else ""
        title.append(f"  {plan.model.name} on {gpus}{plan.target.label}", style="bold")
        title.no_wrap = True
        title.overflow = "ellipsis"
        self.query_one("#title", Static).update(title)
        self.query_one("#memory", MemoryBar).set_memory(plan.memory.components, plan.memory.device_bytes,
                                                        plan.capacity_bytes, plan.budget_bytes)
        summary = Text()
        summary.append("speed ", style="bold")
        summary.append(rate(plan.tokens_per_second) + "\n")
        summary.append("time  ", style="bold")
        note = f" ({count(plan.dataset_tokens)} tok assumed)" if plan.tokens_assumed else ""
        summary.append(duration(plan.time_seconds) + note + "\n")
        summary.append("cost  ", style="bold")
        summary.append(money(plan.cost) + "\n")
        summary.append("batch ", style="bold")
        summary.append(f"{s.effective_batch()} x {s.seq_len} = {count(s.effective_batch() * s.seq_len)} tok/step\n")
        summary.append("peak (torch) ", style="bold")
        summary.append(gib(plan.memory.torch_peak_bytes, 2) + "\n")
        summary.append("device (smi) ", style="bold")
        summary.append(gib(plan.memory.device_bytes, 2))
        self.query_one("#summary", Static).update(summary)
        reasons = Text()
        for r in plan.reasons:
            reasons.append(f"- {r}\n")
        for w in plan.warnings:
            reasons.append(f"! {w}\n", style="bold yellow")
        self.query_one("#reasons", Static).update(reasons)
        table = self.query_one("#alternatives", DataTable)
        table.clear()
        for alt in plan.alternatives:
            a = alt.setup
            mem = gib(alt.device_bytes) + ("" if alt.fits else " !")
            table.add_row(alt.why or "-", a.method, str(a.seq_len), f"{a.micro_batch}x{a.grad_accum}",
                          "on" if a.grad_checkpointing else "off", mem, rate(alt.tokens_per_second))
        if sync_knobs:
            self._sync_knobs(s)

    def _sync_input(self, knob: str, value: Any) -> None:
        inp = self.query_one(f"#{knob}", Input)
        with inp.prevent(Input.Changed):
            inp.value = str(value)

    def _sync_knobs(self, s: Any) -> None:
        for knob in SCREEN_KNOBS:
            value = getattr(s, knob.name)
            if knob.kind == COUNT:
                self._sync_input(knob.name, value)
            else:
                self.query_one(f"#{knob.name}", Choice).set_value(shown_value(knob, value))
        self._sync_used(s)

    def _sync_used(self, s: Any) -> None:
        """LoRA rows under full fine-tuning: kept in place, disabled, saying why."""
        unused = s.method == "full"
        for knob in SCREEN_KNOBS:
            if knob.group != LORA:
                continue
            widget = self.query_one(f"#{knob.name}")
            widget.disabled = unused
            if isinstance(widget, Input):
                widget.placeholder = NOT_USED if unused else ""
                if unused:
                    with widget.prevent(Input.Changed):
                        widget.value = ""
                elif not widget.value:
                    self._sync_input(knob.name, getattr(s, knob.name))
            elif isinstance(widget, Choice):
                widget.unused = NOT_USED if unused else None

    # -- actions -------------------------------------------------------------------------
    def action_accept(self) -> None:
        if self.plan is None:
            return
        if not self.plan.fits and not self.target.dry_run:
            self.notify("This configuration does not fit the card: change a knob, pick an "
                        "alternative or Ctrl+R to re-plan.", severity="error")
            return
        self.post_message(PlanAccepted(self.plan))

    def action_resolve(self) -> None:
        self.query_one("#title", Static).update(Text("Re-planning with your edits fixed...", style="dim"))
        self.solve(PartialSetup(dict(self.fixed)))  # the edited knobs fixed, the rest the solver's

    def action_reset(self) -> None:
        """Undo every edit, back to the solver's plan, once the user confirms it."""
        if self.solved is None:
            return
        if not self.fixed and self.plan is self.solved:
            self.notify("No edits to undo: this is the solver's plan.")
            return
        edited = ", ".join(dict.fromkeys(INT_KNOBS.get(k) or k.replace("_", " ") for k in self.fixed)) or "knobs"
        focused = self.focused

        def answered(yes: bool | None) -> None:
            if yes:
                self.fixed.clear()
                self._show(self.solved, sync_knobs=True)
                self.notify("Back to the solver's plan.")
            if focused is not None and focused.is_attached and focused.focusable:
                focused.focus()

        self.app.push_screen(ConfirmDialog(f"Undo your edits ({edited}) and go back to the solver's plan?"),
                             answered)

    def action_move(self, delta: int) -> None:
        """Up/Down: the previous or next knob row that is in use (Down from the last one: the
        alternatives table)."""
        rows = [self.query_one(f"#{k.name}") for k in SCREEN_KNOBS]
        rows = [w for w in rows if w.focusable]
        table = self.query_one("#alternatives", DataTable)
        if self.focused is table:  # the table's own cursor; Up from its first row: the last knob
            if delta < 0 and table.cursor_row <= 0 and rows:
                rows[-1].focus()
            else:
                table.action_cursor_up() if delta < 0 else table.action_cursor_down()
            return
        if self.focused not in rows:
            body = self.query_one("#body", VerticalScroll)
            body.scroll_up() if delta < 0 else body.scroll_down()
            return
        i = rows.index(self.focused) + delta
        if 0 <= i < len(rows):
            rows[i].focus()
        elif i >= len(rows):
            self.query_one("#alternatives", DataTable).focus()

    def action_scroll(self, direction: int) -> None:
        body = self.query_one("#body", VerticalScroll)
        body.scroll_page_down() if direction > 0 else body.scroll_page_up()

    def action_help(self) -> None:
        self.app.push_screen(HelpDialog("Plan", [
            ("Up/Down, Tab", "previous / next knob, then the alternatives table"),
            ("Left/Right", "change a choice knob"), ("digits", "edit a number: estimate follows"),
            ("Ctrl+U", "clear a number field"),
            ("Enter", "review and launch (on an alternative: use it)"),
            ("Ctrl+R", "re-plan, keeping the knobs you edited"),
            ("Ctrl+Z", "undo your edits: back to the solver's plan (asks first)"),
            ("Ctrl+N", "review and launch"), ("Esc", "back"),
        ]))
