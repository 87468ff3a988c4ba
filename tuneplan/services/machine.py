"""This machine against the plan's target: what `tuneplan train` and the wizard both check
before a launch.

    gpus = check_target_here("4090", None, probe, force=False)  # UserError if NVML disagrees
    setup, note = setup_for_this_machine(setup, local_gpus=len(gpus))

A plan is made for a target card (`--gpu`, `--vram`, a dry run in the wizard); a run trains
on the GPUs NVML finds here. When they differ the launch stops with one line unless the user
forces it. The compute dtype follows one rule for every launch: the plan's dtype on a GPU,
float32 on a machine without one (CPU training has no fast bfloat16/float16 autocast). No
torch, no textual.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from planner.gpus import CPU_COMPUTE_DTYPE, format_gib
from tuneplan.errors import UserError

CPU_DTYPE = CPU_COMPUTE_DTYPE
"""What a run computes in on a machine without an NVIDIA GPU: the planner's CPU rule
(`planner.gpus.CPU_COMPUTE_DTYPE`), so a plan for the CPU and the run it launches agree."""


def check_target_here(gpu: str | None, vram_bytes: int | None, probe: Any = None, *,
                      force: bool = False, flag_text: str | None = None) -> tuple[list[Any], list[str]]:
    """Compare `--gpu` / `--vram` with the GPUs NVML finds here. Returns (the GPUs found,
    notes); raises a one-line UserError when the target is not here, unless `force`."""
    if probe is None:
        from tuneplan.services.gpu import default_probe

        probe = default_probe()
    gpus = list(probe.probe())
    if gpu is None and vram_bytes is None:
        return gpus, []
    what = flag_text or (f"--gpu {gpu}" if gpu else f"--vram {format_gib(vram_bytes)}")
    problem = None
    if not gpus:
        problem = f"this machine has no NVIDIA GPU ({probe.status()})"
    elif gpu:
        from tuneplan.services.planning import resolve_gpu

        card = resolve_gpu(gpu)
        if not any(g.catalog is not None and g.catalog.key == card.key for g in gpus):
            problem = f"NVML finds {_names(gpus)} here, not a {card.name}"
        elif vram_bytes is not None and vram_bytes > max(g.total_bytes for g in gpus):
            problem = f"the largest GPU here has {format_gib(max(g.total_bytes for g in gpus))}"
    elif vram_bytes is not None and vram_bytes > max(g.total_bytes for g in gpus):
        problem = f"the largest GPU here ({_names(gpus[:1])}) has {format_gib(max(g.total_bytes for g in gpus))}"
    if problem is None:
        return gpus, []
    if not force:
        raise UserError(f"{what}: {problem}; `train` trains on this machine: plan for that card with "
                        f"`tuneplan plan {what}`, drop {what.split()[0]} to plan for the GPUs here, or add "
                        "--force to train here anyway")
    return gpus, [f"{what} is not this machine ({problem}); training here anyway (--force)"]


def _names(gpus: Sequence[Any]) -> str:
    names = sorted({g.name for g in gpus})
    return ", ".join(names) if len(gpus) == 1 else f"{len(gpus)} GPUs ({', '.join(names)})"


def setup_for_this_machine(setup: Any, local_gpus: int) -> tuple[Any, str | None]:
    """The setup a launch here runs: unchanged on a GPU machine; on a machine without one, the
    compute dtype becomes float32 (with a note saying so)."""
    if local_gpus > 0 or setup.compute_dtype == CPU_DTYPE:
        return setup, None
    note = (f"this machine has no NVIDIA GPU: the run trains on the CPU in {CPU_DTYPE} "
            f"(the plan's {setup.compute_dtype} is for the GPU it was made for)")
    return replace(setup, compute_dtype=CPU_DTYPE), note

