"""A bake-off's measured quality: which training method to recommend, and what a plan says
about it. Pure standard library.

`tuneplan compare` trains short trials of LoRA, QLoRA and full fine-tuning with the same data,
seed, effective batch and token budget, evaluates each on the same held-out split, and hands
the results here as `Trial`s:

    rec = recommend([Trial("lora", eval_loss=1.52, peak_bytes=..., projected_seconds=...),
                     Trial("qlora", eval_loss=1.53, ...), Trial("full", skipped="does not fit")])
    rec.method, rec.reason      # "lora", "LoRA: QLoRA is within 0.7% of its eval loss ..."

The rule follows the advice the project grew from: measure, and only pay for a method with
more memory or time when the evals say it is better. Methods whose eval loss is within
`QUALITY_TOLERANCE` of the best are "the same quality"; among those the fastest full run wins,
and among runs within `SPEED_TOLERANCE` of that, the one with the least memory.

The planner reads a `BakeoffResult` (passed in by the services, `Constraints.measured`): a
method measured worse than the best beyond the tolerance is tried last, full fine-tuning
measured better is tried first, and the plan's reasons say what the bake-off measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QUALITY_TOLERANCE = 0.01
"""Relative eval-loss gap under which two methods count as the same quality (1%). A chosen
threshold, not a measured constant: the QLoRA paper (Dettmers et al. 2023, section 4) reports
4-bit NF4 QLoRA matching 16-bit LoRA within about this margin, and a short trial's eval loss
moves by about as much from seed to seed."""
SPEED_TOLERANCE = 0.10
"""Projected full-run times within 10% count as the same speed (the measured tokens/s of a
short trial vary by about that much from step to step)."""

METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _title(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Trial:
    """One method's trial as measured (None: not known)."""

    method: str
    """`lora`, `qlora` or `full`."""
    eval_loss: float | None = None
    """Mean loss on the held-out split after the trial."""
    metric: float | None = None
    """The generation metric on the held-out prompts (higher is better), if any."""
    metric_name: str | None = None
    peak_bytes: int | None = None
    """Peak memory measured during the trial, in bytes."""
    predicted_bytes: int | None = None
    """The planner's prediction of the same peak, in bytes."""
    tokens_per_second: float | None = None
    """Measured training speed (steady state)."""
    projected_seconds: float | None = None
    """The full run (every epoch asked for) at the measured speed, in seconds."""
    projected_cost: float | None = None
    """USD of the full run at the card's hourly price."""
    skipped: str | None = None
    """Why this method has no result (does not fit, crashed, stopped); None when it has one."""

    def measured(self) -> bool:
        return self.skipped is None and self.eval_loss is not None and math.isfinite(self.eval_loss)


@dataclass(frozen=True)
class Recommendation:
    method: str | None
    """The method to train with (None: nothing finished to compare)."""
    reason: str


def relative_gap(loss: float, best: float) -> float:
    """How much worse `loss` is than `best`, relative to `best` (0.01 = 1% higher)."""
    if best == 0:
        return 0.0 if loss == 0 else math.inf
    return (loss - best) / abs(best)


def recommend(trials: list[Trial] | tuple[Trial, ...], tolerance: float = QUALITY_TOLERANCE) -> Recommendation:
    """The method to train with, and why (see the module docstring for the rule)."""
    done = [t for t in trials if t.measured()]
    if not done:
        return Recommendation(None, "no trial finished with an eval loss: nothing to compare")
    best = min(done, key=lambda t: t.eval_loss)  # type: ignore[arg-type, return-value]
    same = [t for t in done if relative_gap(t.eval_loss, best.eval_loss) <= tolerance]  # type: ignore[arg-type]
    timed = [t for t in same if t.projected_seconds is not None and t.projected_seconds > 0]
    pick = best
    if timed:
        fastest = min(t.projected_seconds for t in timed)  # type: ignore[type-var]
        quick = [t for t in timed if t.projected_seconds <= fastest * (1 + SPEED_TOLERANCE)]  # type: ignore[operator]
        pick = min(quick, key=lambda t: (t.peak_bytes is None, t.peak_bytes or 0, t.projected_seconds))
    elif any(t.peak_bytes for t in same):
        pick = min(same, key=lambda t: (t.peak_bytes is None, t.peak_bytes or 0))
    parts = []
    if len(done) == 1:
        parts.append(f"Only {method_name(pick.method)} finished with an eval loss")
    elif pick is best:
        parts.append(f"{_title(method_name(pick.method))} has the lowest eval loss ({best.eval_loss:.4f})")
    else:
        parts.append(_versus(pick, best))
    for t in done:
        if t is pick or t is best and pick is not best:
            continue
        gap = relative_gap(t.eval_loss, pick.eval_loss)  # type: ignore[arg-type]
        if t in same:
            parts.append(_same_but(t, pick))
        else:
            parts.append(f"{method_name(t.method)} is {gap:.1%} worse")
    for t in trials:
        if t.skipped is not None:
            parts.append(f"{method_name(t.method)}: {t.skipped}")
    return Recommendation(pick.method, "; ".join(parts))


def _versus(pick: Trial, best: Trial) -> str:
    """`QLoRA is within 0.7% of LoRA's eval loss at 45% of the memory and 0.9x the time`."""
    gap = relative_gap(pick.eval_loss, best.eval_loss)  # type: ignore[arg-type]
    text = f"{_title(method_name(pick.method))} is within {max(gap, 0):.1%} of {method_name(best.method)}'s eval loss"
    more = []
    if pick.peak_bytes and best.peak_bytes:
        more.append(f"at {pick.peak_bytes / best.peak_bytes:.0%} of the memory")
    if pick.projected_seconds and best.projected_seconds:
        more.append(f"{pick.projected_seconds / best.projected_seconds:.2g}x the time")
    return text + (" " + " and ".join(more) if more else "")


def _same_but(other: Trial, pick: Trial) -> str:
    """Why a method of the same quality was not picked."""
    name = _title(method_name(other.method))
    if other.projected_seconds and pick.projected_seconds and other.projected_seconds > pick.projected_seconds:
        return f"{name} is as good but its full run takes {other.projected_seconds / pick.projected_seconds:.2g}x as long"
    if other.peak_bytes and pick.peak_bytes and other.peak_bytes > pick.peak_bytes:
        return f"{name} is as good but needs {other.peak_bytes / pick.peak_bytes:.2g}x the memory"
    return f"{name} is as good"


@dataclass(frozen=True)
class BakeoffResult:
    """A finished bake-off for one model and dataset, as the planner reads it."""

    date: str
    """When it ran (YYYY-MM-DD), for the plan's reasons."""
    trials: tuple[Trial, ...]
    recommendation: Recommendation
    name: str = ""
    """The comparison's id (`tuneplan compare --show ID`)."""
    tolerance: float = QUALITY_TOLERANCE

    def loss(self, method: str) -> float | None:
        t = next((t for t in self.trials if t.method == method and t.measured()), None)
        return t.eval_loss if t is not None else None

    def best_loss(self) -> float | None:
        losses = [t.eval_loss for t in self.trials if t.measured()]
        return min(losses) if losses else None  # type: ignore[type-var]

    def worse(self, method: str) -> bool:
        """Measured worse than the best method beyond the tolerance."""
        loss, best = self.loss(method), self.best_loss()
        return loss is not None and best is not None and relative_gap(loss, best) > self.tolerance

    def method_order(self, order: list[str]) -> list[str]:
        """The solver's method preference with the measured quality applied: full fine-tuning
        first when it measured better than every adapter method beyond the tolerance; methods
        measured worse than the best tried after the others (kept: they may be all that fits)."""
        order = list(order)
        if "full" not in order and self.loss("full") is not None and not self.worse("full") and \
                all(self.worse(m) for m in order if self.loss(m) is not None) and \
                any(self.loss(m) is not None for m in order):
            return ["full", *order]
        return sorted(order, key=lambda m: self.worse(m))  # stable: the usual order among equals

    def reasons(self, chosen: str, asked: bool = False) -> list[str]:
        """What the plan says about the bake-off, given the method it chose (`asked`: the
        user fixed the method)."""
        measured = [t for t in self.trials if t.measured()]
        if not measured:
            return []
        best = min(measured, key=lambda t: t.eval_loss)  # type: ignore[arg-type, return-value]
        facts = []
        for t in measured:
            if t is best:
                continue
            gap = relative_gap(t.eval_loss, best.eval_loss)  # type: ignore[arg-type]
            if gap <= self.tolerance:
                facts.append(f"{method_name(t.method)} within {gap:.1%} of {method_name(best.method)}")
            else:
                facts.append(f"{method_name(t.method)} {gap:.1%} worse than {method_name(best.method)}")
        what = ", ".join(facts) if facts else f"only {method_name(best.method)}"
        rec = self.recommendation.method
        where = f" ({self.name})" if self.name else ""
        line = f"The bake-off on {self.date}{where} measured {what} (eval loss)"
        line += f"; it recommends {method_name(rec)}." if rec else "."
        out = [line]
        if rec and chosen != rec:
            name = _title(method_name(chosen))
            if asked:
                how = "it measured worse" if self.worse(chosen) else f"it measured as good as {method_name(rec)}"
                out.append(f"{name} as asked: {how}.")
            elif self.worse(chosen):
                out.append(f"This plan uses {method_name(chosen)} although it measured worse: the better methods "
                           "do not fit this card.")
            else:
                out.append(f"{name} measured as good as {method_name(rec)}, and on this card the planner's rules "
                           "(memory, then speed) pick it.")
        elif rec and chosen == "full" and self.loss("full") is not None:
            out.append("Full fine-tuning is planned because the bake-off measured it better than the adapters.")
        return out
