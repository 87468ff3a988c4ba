"""Messages the screens post; the app routes on them (small dataclass-like events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.message import Message


class TargetChosen(Message):
    """The hardware step is done: plan for this target."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target


class ModelChosen(Message):
    """The model step is done."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model


class DatasetChosen(Message):
    """The dataset step is done (preview may be None when skipped)."""

    def __init__(self, preview: Any) -> None:
        super().__init__()
        self.preview = preview


class PlanAccepted(Message):
    """The plan step is done: review this plan."""

    def __init__(self, plan: Any) -> None:
        super().__init__()
        self.plan = plan


class RunLaunched(Message):
    """A run was launched: open its dashboard."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)


class RunUpdated(Message):
    """A new snapshot of a followed run. Coalesces: a newer one replaces a pending one, so
    a slow redraw skips stale snapshots instead of queueing them."""

    def __init__(self, snapshot: Any) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdated)


class GpuSampled(Message):
    """A ~1 Hz GPU sample (None: not available). Coalesces like RunUpdated."""

    def __init__(self, sample: Any) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)
