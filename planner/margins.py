"""The default safety margin, derived from the memory model's measured error.

The margin is what the plan keeps free on the card for what the memory model gets wrong. It
is not a guess: it is the largest error measured for the model, in either direction (a few
published rows cannot tell the sign of the next error), in the regime the plan is in,
rounded up to a whole percent. Two measurements feed it:

- the CUDA-semantics trace of our training step on a grid of full-size models
  (bench/bench_trace_cuda.py; the traced peaks are kept in tests/data/traces/cuda_grid.csv):
  the residual of `torch_peak_bytes`, i.e. of the tensor-level model;
- the published GPU runs of our training stack (transformers + peft, the PEFT
  method-comparison rows of tests/data/calibration/cases.json): the residual at the level the
  row measured (reserved memory), which adds what a trace cannot show, the caching
  allocator's reserve.

The two add: a device-level error on top of a tensor-level one. `derive_margin` does the
arithmetic; tests/planner/test_margins.py recomputes it from the data and checks the table
below, so the numbers cannot drift from the evidence. Regimes are split only where the
evidence differs: there are no published runs of this stack on several GPUs, so that regime
says so and uses the one-GPU figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MarginRegime:
    """One regime of the safety margin and the evidence it comes from."""

    key: str
    margin: float
    """Fraction of usable memory kept free."""
    published_worst: float
    """Largest |error| of the model on the published runs of this regime (fraction)."""
    trace_worst: float
    """Bound on the |error| of `torch_peak_bytes` against the CUDA-semantics trace grid (fraction)."""
    sentence: str
    """What the plan says about it."""


def derive_margin(published_errors, trace_errors) -> float:
    """Largest |published error| + largest |trace error|, rounded up to a whole percent."""
    worst = max((abs(e) for e in published_errors), default=0.0) + max((abs(e) for e in trace_errors), default=0.0)
    return math.ceil(round(worst * 100, 6)) / 100


_ONE_GPU_PUBLISHED = 0.081  # PEFT method-comparison (L40S, reserved - init): P028 +8.1%
_ONE_GPU_TRACE = 0.005  # bench/bench_trace_cuda.py grid: every case within 0.5% (worst: MoE, -0.1%)

REGIMES = {
    "single": MarginRegime(
        key="single", margin=0.09, published_worst=_ONE_GPU_PUBLISHED, trace_worst=_ONE_GPU_TRACE,
        sentence="for one GPU: the memory model's largest error on published runs of this training stack, "
                 "8.1%, plus its error against the CUDA-semantics trace, at most 0.5%"),
    "multi": MarginRegime(
        key="multi", margin=0.09, published_worst=_ONE_GPU_PUBLISHED, trace_worst=_ONE_GPU_TRACE,
        sentence="for several GPUs: this training stack has no published runs on several GPUs, so the one-GPU "
                 "figure applies, 8.1% published error plus 0.5% trace error"),
}

DEFAULT_SAFETY_MARGIN = REGIMES["single"].margin


def regime_for(num_gpus: int) -> MarginRegime:
    """The margin regime of a plan on `num_gpus` GPUs."""
    return REGIMES["single" if num_gpus <= 1 else "multi"]


def margin_sentence(margin: float, num_gpus: int) -> str:
    """How the plan explains the margin it kept: the regime's evidence, or 'set by you'."""
    regime = regime_for(num_gpus)
    if abs(margin - regime.margin) < 1e-9:
        return f"safety margin {margin:.0%}, {regime.sentence}"
    return f"safety margin {margin:.0%} (set by you; the evidence-based default is {regime.margin:.0%})"
