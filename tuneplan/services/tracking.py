"""Experiment trackers (`training.report_to`): is the one asked for installed here?

Checked by the launcher before a run folder is created, so a missing tracker is one line and
exit 2 instead of a worker that dies while building the trainer. No torch here: the check
looks for the module with `importlib.util.find_spec` and never imports it.
"""

from __future__ import annotations

import importlib.util

from tuneplan.config import TRACKERS
from tuneplan.errors import UserError

TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",),
                   "mlflow": ("mlflow",)}
"""Modules that satisfy each tracker: transformers' `is_tensorboard_available` accepts
`tensorboard` or `tensorboardX` (`transformers/integrations/integration_utils.py`)."""


def check_tracker(report_to: str) -> None:
    """Raise a one-line `UserError` naming the pip package when the tracker is not installed."""
    package = TRACKERS.get(report_to)
    if package is None:
        return
    if not any(importlib.util.find_spec(m) is not None for m in TRACKER_MODULES[report_to]):
        raise UserError(f"--report-to {report_to} needs the {package} package, which is not installed here: "
                        f"pip install {package} (or pick another tracker, or none)")
