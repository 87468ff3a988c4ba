"""OOM recovery: the next, smaller configuration after an out-of-memory error.

Pure (no torch). Order, one change per attempt, effective batch always kept:
1. halve the micro-batch (to its largest proper divisor) and multiply gradient accumulation
   by the same factor;
2. turn on activation checkpointing;
3. switch LoRA to QLoRA, only when the user allowed it (`recovery.allow_qlora`).

An out-of-memory error during evaluation changes only the eval micro-batch
(`replan_eval_after_oom`): the training batch geometry, and so the optimisation, stays as is.
"""

from __future__ import annotations

from dataclasses import replace

from planner.setup import TrainSetup


def _largest_proper_divisor(n: int) -> int:
    for d in range(n // 2, 0, -1):
        if n % d == 0:
            return d
    return 1


def replan_after_oom(setup: TrainSetup, *, allow_qlora: bool) -> tuple[TrainSetup, dict[str, list]] | None:
    """(new setup, changes as knob -> [old, new]) or `None` when nothing smaller is left."""
    if setup.micro_batch > 1:
        mb = _largest_proper_divisor(setup.micro_batch)
        ga = setup.grad_accum * (setup.micro_batch // mb)
        new = replace(setup, micro_batch=mb, grad_accum=ga)
        return new, {"micro_batch": [setup.micro_batch, mb], "grad_accum": [setup.grad_accum, ga]}
    if not setup.grad_checkpointing:
        return replace(setup, grad_checkpointing=True), {"grad_checkpointing": [False, True]}
    if setup.method == "lora" and allow_qlora:
        return replace(setup, method="qlora"), {"method": ["lora", "qlora"]}
    return None


def replan_eval_after_oom(eval_batch: int) -> int | None:
    """The next eval micro-batch after an out-of-memory error in evaluation (its largest
    proper divisor), or `None` at 1."""
    return _largest_proper_divisor(eval_batch) if eval_batch > 1 else None
