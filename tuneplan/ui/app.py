"""The tuneplan Textual app: routing between screens and the services they use."""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding

from tuneplan.ui.app_base import WizardApp, WizardState
from tuneplan.ui.messages import DatasetChosen, ModelChosen, PlanAccepted, RunLaunched, TargetChosen
from tuneplan.ui.services import ServiceBundle


class TuneplanApp(WizardApp):
    """`tuneplan` (the wizard) and `tuneplan attach` (the dashboard of one run)."""

    TITLE = "tuneplan"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+c", "interrupt", "Quit", show=False, priority=True)]

    def __init__(self, services: ServiceBundle, *, run_dir: Path | None = None,
                 dry_run: bool = False) -> None:
        super().__init__()
        self.services = services
        self.run_dir = run_dir
        self.dry_run = dry_run
        self.state = WizardState()

    def on_mount(self) -> None:
        if self.run_dir is not None:
            from tuneplan.ui.screens.dashboard_screen import DashboardScreen

            self.push_screen(DashboardScreen(self.run_dir))
        else:
            from tuneplan.ui.screens.hardware_screen import HardwareScreen

            self.push_screen(HardwareScreen(dry_run=self.dry_run))

    def action_interrupt(self) -> None:
        """Ctrl+C leaves the app; on a dashboard it detaches (the run goes on, and says so)."""
        detach = getattr(self.screen, "action_detach", None)
        if detach is not None:
            detach()
        else:
            self.exit()

    # -- routing: each step's message opens the next step --------------------------------
    def on_target_chosen(self, message: TargetChosen) -> None:
        from tuneplan.ui.screens.model_screen import ModelScreen

        self.state.target = message.target
        self.push_screen(ModelScreen())

    def on_model_chosen(self, message: ModelChosen) -> None:
        from tuneplan.ui.screens.dataset_screen import DatasetScreen

        self.state.model = message.model
        self.push_screen(DatasetScreen(model=message.model))

    def on_dataset_chosen(self, message: DatasetChosen) -> None:
        from tuneplan.ui.screens.plan_screen import PlanScreen

        self.state.dataset = message.preview
        self.push_screen(PlanScreen(self.state.target, self.state.model, message.preview))

    def on_plan_accepted(self, message: PlanAccepted) -> None:
        from tuneplan.ui.screens.review_screen import ReviewScreen

        self.state.plan = message.plan
        self.push_screen(ReviewScreen(self.state.plan, self.state.dataset))

    def on_run_launched(self, message: RunLaunched) -> None:
        from tuneplan.ui.screens.dashboard_screen import DashboardScreen

        self.run_dir = message.run_dir
        index = getattr(self.state.target, "index", None)
        self.switch_screen(DashboardScreen(message.run_dir, gpu_index=index or 0))


def create_app(services: ServiceBundle | None = None, *, run_dir: Path | None = None,
               dry_run: bool = False) -> TuneplanApp:
    """The one app factory: the CLI passes the real services, tests swap boundaries."""
    if services is None:
        from tuneplan.ui.services import default_services

        services = default_services()
    return TuneplanApp(services, run_dir=run_dir, dry_run=dry_run)
