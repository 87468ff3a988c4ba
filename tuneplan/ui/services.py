"""The services the app is built with (no textual here).

`ServiceBundle` is what `create_app` receives: the CLI builds it with `default_services()`,
tests build the same real services with fakes only at the boundaries (NVML, the Hub).
Screens call these objects and never NVML, subprocesses or the planner's internals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the types only: building the bundle imports them (`default_services`)
    from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter, RunsAdapter


@dataclass(frozen=True)
class ServiceBundle:
    """The app's services. Each is the real service object; only boundaries are swapped."""

    gpu: Any
    """`tuneplan.services.gpu.GpuProbe` (typed loosely: the wizard reaches services only through
    `tuneplan.app`, which hands the probe out as `gpu_probe()`): GPU probe and ~1 Hz samples (NVML boundary inside)."""
    models: ModelsAdapter
    """`tuneplan.ui.adapters.ModelsAdapter`: catalog search and model resolution (Hub boundary inside)."""
    planning: PlanningAdapter
    """`tuneplan.ui.adapters.PlanningAdapter`: the solver and single estimates (`tuneplan.app`)."""
    runs: RunsAdapter
    """`tuneplan.ui.adapters.RunsAdapter`: launch, list, stop, save (`tuneplan.app`)."""
    hub_files: Any = None
    """Hub boundary for dataset previews and tokenizer files (None: the real Hub)."""
    runs_root: Path | None = None
    """Where runs live (None: the launcher's default)."""
    clock: Callable[[], float] | None = None
    """Wall clock (tests may pin it); defaults to time.time."""

    def now(self) -> float:
        import time

        return (self.clock or time.time)()


def default_services(runs_root: Path | None = None) -> ServiceBundle:
    """The real services, as the CLI uses them."""
    from tuneplan.app import gpu_probe
    from tuneplan.ui import adapters

    return ServiceBundle(
        gpu=gpu_probe(),
        models=adapters.ModelsAdapter(),
        planning=adapters.PlanningAdapter(),
        runs=adapters.RunsAdapter(runs_root),
        hub_files=None,
        runs_root=runs_root or _env_runs_root(),
    )


def _env_runs_root() -> Path | None:
    value = os.environ.get("TUNEPLAN_RUNS_DIR")
    return Path(value) if value else None
