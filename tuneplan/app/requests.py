"""What the front ends ask the application layer for: a `RunRequest` and its `Target`.

Both front ends build one: `tuneplan plan` / `train` / `probe` from their flags, the wizard
from its screens. Plain data, no I/O: `tuneplan.app.planning` and `tuneplan.app.runs` act on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from planner.solver import DEFAULT_SAFETY_MARGIN
from tuneplan.knobs import PartialSetup


@dataclass(frozen=True)
class Target:
    """The hardware to plan for. `gpu`: a catalog card (loose name); `vram_bytes`: a memory
    size (with `gpu`: the memory free on that card); `index`: which NVML GPU here (neither
    `gpu` nor `vram_bytes`); `hardware`: a `planner.solver.Hardware` the caller already built
    (the wizard's card). All None: the GPUs NVML finds here."""

    gpu: str | None = None
    vram_bytes: int | None = None
    index: int | None = None
    hardware: Any = None

    def named(self) -> bool:
        """Whether a card or a memory size was named (not this machine's GPUs)."""
        return bool(self.gpu) or self.vram_bytes is not None


@dataclass(frozen=True)
class RunRequest:
    """A run (or a plan) as the user asked for it; what is left out the planner chooses."""

    model: Any = None
    """A model reference (catalog name, Hub id, folder) or a resolved model (the wizard's)."""
    dataset: Any = None
    """A dataset source (file or Hub id, measured with the model's tokenizer) or
    `planner.solver.DatasetStats` (token statistics the caller has); None: assumed."""
    setup: PartialSetup = field(default_factory=PartialSetup)
    """The knobs given (flags, the wizard's edits); the others are the planner's."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Hyperparameter and run-setting overrides, `section.field` -> value (`training.epochs`),
    as `tuneplan.settings` declares them."""
    target: Target = field(default_factory=Target)
    one_gpu: bool = False
    """Plan for one GPU unless `setup` fixes `num_gpus` (a run trains on the card it names;
    the wizard plans for the one card chosen). False: `tuneplan plan`'s rule (one catalog card,
    more suggested; all the GPUs of one model NVML finds)."""
    # -- plan-only inputs: how the planner searches
    effective_batch: int | None = None
    """Sequences per optimizer step (None: micro-batch x accumulation when both are given, else 16)."""
    safety_margin: float = DEFAULT_SAFETY_MARGIN
    prefer_accuracy: bool = False
    price_per_hour: float | None = None
    min_seq_len: int | None = None
    max_seq_len: int | None = None
    gpus_per_node: int = 8
    token: str | None = None
    """Hub token for gated repos (passed through, never stored)."""
    host_ram_bytes: int | None = None
    """Host RAM the offloaded activations may use, in bytes (`--host-ram`); None: this machine's
    available RAM when planning for the GPUs NVML finds here, else unknown."""
    measured: Any = None
    """A bake-off's measured quality (`planner.bakeoff.BakeoffResult`) for the solver to weigh;
    None: the newest `tuneplan compare` of this model and dataset, if any (`find_measured`)."""
    # -- where a run's configuration comes from (`tuneplan.app.runs.assemble`)
    config_file: str | None = None
    """A run configuration file (its `[setup]` keys are fixed knobs)."""
    preset: str | None = None
    """A preset name or file, re-fitted to the target first."""
    trust_remote_code: bool | None = None
    """Granted by the user (only this grants it; a file may only ask)."""
    name: str | None = None
    """The run folder's name."""
    force: bool = False
    """Train here even though the target names hardware NVML does not find."""

    def epochs(self) -> float:
        return float(self.settings.get("training.epochs") or 1.0)
