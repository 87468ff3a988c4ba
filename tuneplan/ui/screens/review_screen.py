"""Step 5: the resolved configuration, the equivalent command line, save as preset, probe, launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Input, Label, Static

from tuneplan.ui.app_base import WizardScreen
from tuneplan.config import SETTINGS, TrainingConfig
from tuneplan.errors import UserError
from tuneplan.services.machine import CPU_DTYPE
from tuneplan.settings import CHOICE, COUNT
from tuneplan.ui.messages import RunLaunched
from tuneplan.ui.widgets.choice import Choice
from tuneplan.ui.widgets.dialogs import HelpDialog
from tuneplan.ui.widgets.step_bar import StepBar


# the hyperparameter rows: which, in what order, their labels, help and defaults come from the
# settings registry (`tuneplan/config.py`: `review=`); the preset name sits among them as row 4
REVIEW_SETTINGS = tuple(sorted((s for s in SETTINGS if s.review), key=lambda s: s.review_row))
PRESET_ROW = 4
FIELD_HELP = {**{s.name: s.review_help for s in REVIEW_SETTINGS if s.review_help},
              "preset_name": "preset name: then Ctrl+S (or Enter) saves this configuration"}


class RunLaunchFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ProbeFinished(Message):
    """The probe worker is done: its report (or one line why it failed)."""

    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class CompareStarted(Message):
    """The bake-off job started (or one line why it did not)."""

    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class ReviewScreen(WizardScreen[None]):
    """Ctrl+P probes first (a few steps on this machine, measured beside the prediction),
    Ctrl+L launches (then the dashboard opens), Ctrl+B starts the LoRA-vs-QLoRA bake-off
    (`tuneplan compare`, detached), Ctrl+S saves a preset."""

    CSS_PATH = "review_screen.tcss"
    BINDINGS = [
        Binding("ctrl+p", "probe", "Probe first"),
        Binding("ctrl+l", "launch", "Launch"),
        Binding("ctrl+b", "compare", "Bake-off"),
        Binding("ctrl+s", "save_preset", "Save preset"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, plan: Any, dataset: Any) -> None:
        super().__init__()
        self.plan = plan
        self.dataset = dataset
        self.launching = False
        self.probing = False
        self.comparing = False
        self.compare_intro = ""

    def compose(self) -> ComposeResult:
        yield StepBar(5)
        with VerticalScroll(id="body", can_focus=False):
            with Grid(id="hyper"):
                defaults = TrainingConfig()
                rows = sorted([(s.review_row, s) for s in REVIEW_SETTINGS] + [(PRESET_ROW, None)],
                              key=lambda row: row[0])
                for _, s in rows:  # each row's id is its setting, the `TrainingConfig` field
                    if s is None:
                        yield Label("preset name")
                        yield Input("", placeholder="name, then Ctrl+S", id="preset_name", compact=True)
                        continue
                    yield Label(s.review or s.name)
                    default = getattr(defaults, s.name)
                    if s.kind == CHOICE:
                        yield Choice([(c, c) for c in s.choices], default, id=s.name)
                    else:
                        yield Input("" if default is None else f"{default:g}", placeholder=s.review_empty,
                                    type="integer" if s.kind == COUNT else "number", id=s.name, compact=True)
            yield Static(id="field-help")
            yield Static(id="warning")
            yield Static(id="probe")
            yield Static(id="compare")
            yield Static(id="command")
            yield Static(id="config")
        yield Footer()

    def on_mount(self) -> None:
        self._refresh()
        self.query_one("#max_steps", Input).focus()

    def on_descendant_focus(self, event) -> None:
        hint = FIELD_HELP.get(event.widget.id or "", "")
        self.query_one("#field-help", Static).update(Text(f"> {hint}" if hint else "", style="italic"))

    def build_config(self, *, for_launch: bool = True) -> Any:
        """The run configuration this screen would launch (raises UserError on bad input).
        Launched here without a GPU it computes in float32 (the rule of `tuneplan train`); a
        preset and the equivalent command keep the plan's dtype, for the target card."""
        on_cpu = for_launch and self.app.state.local_gpus == 0
        return self.app.services.runs.build_config(self.plan, self.dataset, on_cpu=on_cpu, **self._hyper())

    def _hyper(self) -> dict[str, Any]:
        """The review rows' values, `TrainingConfig` field -> value (None: empty, the default)."""
        out: dict[str, Any] = {}
        for s in REVIEW_SETTINGS:
            if s.kind == CHOICE:
                out[s.name] = self.query_one(f"#{s.name}", Choice).value
                continue
            text = self.query_one(f"#{s.name}", Input).value.strip()
            try:
                out[s.name] = None if not text else (int if s.kind == COUNT else float)(text)
            except ValueError:
                raise UserError(f"{s.review}: not a number (got {text!r})") from None
        return out

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if event.input.id != "preset_name":
            self._refresh()

    @on(Choice.Changed)
    def _choice_changed(self, event: Choice.Changed) -> None:
        self._refresh()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "preset_name":
            self.action_save_preset()
        else:
            self.focus_next()

    def _refresh(self) -> None:
        warning = self.query_one("#warning", Static)
        try:
            config = self.build_config()
        except UserError as exc:
            warning.update(Text(str(exc), style="bold red"))
            return
        runs = self.app.services.runs
        w = Text()
        w.append_text(self._time_line(config))
        if not self.plan.fits:
            w.append(f"This configuration does not fit {self.plan.target.label}: it would run out of "
                     "memory there.\n", style="bold red")
        if self.app.state.local_gpus == 0:
            w.append(f"This machine has no NVIDIA GPU: a launch here trains on the CPU in {CPU_DTYPE} "
                     "(fine for tiny models only).\n", style="yellow")
        elif self.plan.target.dry_run:
            w.append(f"Dry run for {self.plan.target.gpu.name}: a launch here trains on this machine's "
                     "GPU, which the plan was not made for.\n", style="yellow")
        warning.update(w)
        cmd = Text("Equivalent command", style="bold")
        cmd.append_text(self._command_note())
        cmd.append(self.equivalent_command())
        self.query_one("#command", Static).update(cmd)
        cfg = Text("Resolved configuration (config.toml):\n", style="bold")
        cfg.append(runs.config_text(config))
        self.query_one("#config", Static).update(cfg)

    def equivalent_command(self) -> str:
        """`tuneplan train ...` that reproduces this plan on its target card (its dtype included)."""
        return self.app.services.runs.train_command(self.build_config(for_launch=False), target=self.plan.target)

    def _command_note(self) -> Text:
        """What the equivalent command is for, and how this machine differs from that."""
        target = self.plan.target
        if not target.dry_run:
            return Text(":\n", style="bold")
        note = Text(f" (for the {target.gpu.name}; run it there):\n", style="bold")
        if self.app.state.local_gpus == 0:
            here = "this machine has no NVIDIA GPU"
        else:
            here = "this machine's GPU is not that card"
        note.append(f"Here {here}: `train` stops unless --force", style="yellow")
        plan_dtype = self.plan.setup.compute_dtype
        if self.app.state.local_gpus == 0 and plan_dtype != CPU_DTYPE:
            note.append(f", then trains on the CPU in {CPU_DTYPE}, not {plan_dtype}", style="yellow")
        note.append(".\n", style="yellow")
        return note

    def _time_line(self, config: Any) -> Text:
        """Expected time and cost of this run on the planned card, at the plan's speed."""
        from tuneplan.ui.formatting import duration, money

        s, t, plan = config.setup, config.training, self.plan
        tps = plan.tokens_per_second
        t_line = Text("on the planned card: ", style="bold")
        if not tps:
            return t_line.append("no speed estimate for this card\n", style="dim")
        if t.max_steps is not None:
            seconds = t.max_steps * s.effective_batch() * s.seq_len / tps
            what = f"{t.max_steps} steps"
        elif plan.time_seconds is not None:
            seconds = plan.time_seconds * t.epochs
            what = f"{t.epochs:g} epoch(s)"
        else:
            return t_line.append("no dataset statistics: no time estimate\n", style="dim")
        price = plan.target.gpu.price_per_hour
        cost = money(seconds / 3600 * price * s.num_gpus) if price is not None else "-"
        return t_line.append(f"{what} ~ {duration(seconds)}, {cost}\n")

    # -- actions -------------------------------------------------------------------------
    def action_save_preset(self) -> None:
        name = self.query_one("#preset_name", Input).value.strip()
        if not name:
            self.query_one("#preset_name", Input).focus()
            self.notify("Type a preset name, then Ctrl+S (or Enter).")
            return
        try:
            gpu = self.plan.target.gpu
            key = None if gpu.key.startswith(("custom", "nvml-")) else gpu.key
            path = self.app.services.runs.save_preset(self.build_config(for_launch=False), name, gpu=key)
        except UserError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Preset saved: {path}")

    def _config_or_notify(self) -> Any:
        """The run configuration to launch or probe; None (said in a notification) when it is invalid."""
        try:
            return self.build_config()
        except UserError as exc:
            self.notify(str(exc), severity="error")
            return None

    def action_launch(self) -> None:
        if self.launching:
            return
        config = self._config_or_notify()
        if config is None:
            return
        self.launching = True
        self.query_one("#warning", Static).update(Text("Launching...", style="bold"))
        self.launch(config)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def launch(self, config: Any) -> None:
        try:
            target = self.plan.target
            index = None if target.dry_run else target.index
            run_dir = self.app.services.runs.launch(config, gpu_index=index)
        except UserError as exc:
            self.post_message(RunLaunchFailed(str(exc)))
        except Exception as exc:
            self.post_message(RunLaunchFailed(f"launch failed: {type(exc).__name__}: {exc}".splitlines()[0]))
        else:
            self.post_message(RunLaunched(Path(run_dir)))

    def action_probe(self) -> None:
        if self.probing or self.launching:
            return
        config = self._config_or_notify()
        if config is None:
            return
        self.probing = True
        self.query_one("#probe", Static).update(Text(
            "Probing: a few optimizer steps of this configuration on this machine (random weights, nothing "
            "downloaded); a minute or two...", style="bold"))
        self.probe(config)

    @work(thread=True, exclusive=True, exit_on_error=False, group="probe")
    def probe(self, config: Any) -> None:
        try:
            target = self.plan.target
            index = None if target.dry_run else target.index
            text, ok = self.app.services.runs.probe(config, gpu_index=index)
        except UserError as exc:
            text, ok = f"Probe failed: {exc}", False
        except Exception as exc:
            text, ok = f"Probe failed: {type(exc).__name__}: {exc}".splitlines()[0], False
        self.post_message(ProbeFinished(text, ok))

    @on(ProbeFinished)
    def _probed(self, message: ProbeFinished) -> None:
        self.probing = False
        style = "" if message.ok else "bold red"
        self.query_one("#probe", Static).update(Text(message.text + "\n", style=style))

    def action_compare(self) -> None:
        if self.comparing or self.launching:
            return
        config = self._config_or_notify()
        if config is None:
            return
        self.comparing = True
        command = self.app.services.runs.compare_command(self.build_config(for_launch=False), target=self.plan.target)
        self.compare_intro = (f"Bake-off: short trials of LoRA, QLoRA and full fine-tuning on this machine, evaluated "
                              f"side by side; the command for the planned card:\n{command}\n")
        self.query_one("#compare", Static).update(Text(self.compare_intro + "Starting it here...", style="bold"))
        self.start_compare(config)

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare")
    def start_compare(self, config: Any) -> None:
        try:
            pid, log = self.app.services.runs.start_compare(config)
        except UserError as exc:
            self.post_message(CompareStarted(f"Bake-off failed to start: {exc}", False))
        except Exception as exc:
            self.post_message(CompareStarted(f"Bake-off failed to start: {type(exc).__name__}: {exc}".splitlines()[0],
                                             False))
        else:
            self.post_message(CompareStarted(
                f"Bake-off started (pid {pid}), detached: its trials appear in `tuneplan runs`; the table when it "
                f"is done: `tuneplan compare --show latest`; log: {log}", True))

    @on(CompareStarted)
    def _compare_started(self, message: CompareStarted) -> None:
        self.comparing = False
        text = Text(self.compare_intro)
        text.append(message.text + "\n", style="" if message.ok else "bold red")
        self.query_one("#compare", Static).update(text)

    @on(RunLaunchFailed)
    def _failed(self, message: RunLaunchFailed) -> None:
        self.launching = False
        self.query_one("#warning", Static).update(Text(message.error, style="bold red"))

    def action_help(self) -> None:
        self.app.push_screen(HelpDialog("Review", [
            ("Ctrl+P", "probe first: a few steps here, measured beside the prediction"),
            ("Ctrl+L", "launch the run (detached) and open its dashboard"),
            ("Ctrl+B", "bake-off: LoRA vs QLoRA (and full) trials here, evaluated (tuneplan compare)"),
            ("Ctrl+S", "save this configuration as a preset (type a name first)"),
            ("Left/Right", "tracking: the experiment tracker (none, tensorboard, trackio, wandb, mlflow)"),
            ("Tab", "next field"), ("Esc", "back to the plan"),
        ]))
