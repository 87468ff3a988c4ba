"""What the screens may know of the app they run in, typed, without importing `app.py` (which
imports the screens): the wizard's gathered state, the app's attributes, and a screen base
whose `app` is that app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from textual import getters
from textual.app import App
from textual.screen import Screen

from tuneplan.ui.services import ServiceBundle


@dataclass
class WizardState:
    """What the wizard has gathered so far (each step fills one field)."""

    target: Any = None
    """`tuneplan.ui.target.Target` (the hardware step)."""
    model: Any = None
    """`tuneplan.services.models.ResolvedModel` (the model step)."""
    dataset: Any = None
    """`tuneplan.services.dataset_preview.DatasetPreview`, or None when the step was skipped."""
    plan: Any = None
    """The plan the Plan screen accepted (`tuneplan.ui.adapters` plan result)."""
    local_gpus: int | None = None
    """NVIDIA GPUs on this machine (None: not probed yet); 0 means a launch trains on the CPU."""


class WizardApp(App):
    """The attributes of `tuneplan.ui.app.TuneplanApp` that screens use."""

    services: ServiceBundle
    state: WizardState
    run_dir: Path | None
    dry_run: bool


ResultT = TypeVar("ResultT")


class WizardScreen(Screen[ResultT]):
    """A screen of the tuneplan app: `self.app` is typed as the app it runs in (textual's
    `getters.app`, which also checks it at run time)."""

    app = getters.app(WizardApp)
