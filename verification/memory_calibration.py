"""Compare the memory model with published GPU measurements (tests/data/calibration/cases.json).

Each case is one row of `/work/shared/data/measured.csv` expressed as planner inputs: the
catalog model, the `TrainSetup` knobs and the `CalibrationProfile` that describe the row's own
training stack (litgpt, the PEFT method-comparison script, ...) and the statistic the row
measured. The prediction compares like with like:

- `allocated`: `torch.cuda.max_memory_allocated()` -> `torch_peak_bytes`;
- `reserved`: `torch.cuda.max_memory_reserved()` -> `torch_peak_bytes + allocator_overhead`;
- `reserved_minus_init`: reserved after a step minus reserved after loading the model (PEFT
  method comparison) -> reserved minus weights and adapters;
- `nvidia_smi`: `device_bytes`;
- `oom`: the run ran out of memory on a card of `value` -> `device_bytes` must exceed it.

Stdlib only; used by tests/planner/test_calibration.py, tests/planner/test_margins.py,
tests/planner/test_parallel.py, tests/planner/test_memory.py and
bench/bench_memory_calibration.py.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from planner.memory import estimate_memory
from planner.setup import CalibrationProfile, TrainSetup

CASES_PATH = Path(__file__).resolve().parent.parent / "tests" / "data" / "calibration" / "cases.json"
_UNITS = {"GB": 10**9, "GiB": 2**30, "MB": 10**6, "MiB": 2**20}
_SETUP_FIELDS = {f.name for f in fields(TrainSetup)}
_PROFILE_FIELDS = {f.name for f in fields(CalibrationProfile)}

# Stated tolerance of the calibration test: median within 5%, none over 12%.
MEDIAN_TOLERANCE = 0.05
WORST_TOLERANCE = 0.12


@dataclass(frozen=True)
class CaseResult:
    """One published measurement next to the planner's prediction of the same statistic."""

    id: str
    series: str
    measures: str
    measured_bytes: int
    predicted_bytes: int
    """For `oom` cases: the predicted peak (it must exceed `measured_bytes`, the card)."""

    @property
    def error(self) -> float | None:
        """Relative error (prediction / measurement - 1); None for OOM cases."""
        if self.measures == "oom":
            return None
        return self.predicted_bytes / self.measured_bytes - 1


def load_cases(path: Path = CASES_PATH) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def setup_and_profile(values: Mapping[str, Any], what: str = "stack") -> tuple[TrainSetup, CalibrationProfile]:
    """One stack's fields, split by name into the `TrainSetup` knobs and the
    `CalibrationProfile` (how the stack differs from tuneplan's); a list of LoRA targets
    becomes a tuple. Raises ValueError naming `what` for a field of neither."""
    unknown = set(values) - _SETUP_FIELDS - _PROFILE_FIELDS
    if unknown:
        raise ValueError(f"{what}: unknown TrainSetup or CalibrationProfile fields {sorted(unknown)}")
    knobs = {k: v for k, v in values.items() if k in _SETUP_FIELDS}
    if isinstance(knobs.get("lora_targets"), list):
        knobs["lora_targets"] = tuple(knobs["lora_targets"])
    profile = {k: v for k, v in values.items() if k in _PROFILE_FIELDS}
    return TrainSetup(**knobs), CalibrationProfile(**profile)


def case_setup(case: dict, stacks: dict) -> tuple[TrainSetup, dict]:
    """(TrainSetup, extra estimate_memory keyword arguments: the profile, padded_rows) of one
    case: its stack's fields (`stacks`) overridden by its own `setup`."""
    merged = {k: v for k, v in stacks.get(case.get("stack", ""), {}).items() if not k.startswith("_")}
    merged.update(case.get("setup", {}))
    extra: dict[str, Any] = {}
    if "padded_rows" in merged:
        extra["padded_rows"] = merged.pop("padded_rows")
    setup, extra["profile"] = setup_and_profile(merged, f"case {case['id']}")
    return setup, extra


def predict(case: dict, stacks: dict) -> CaseResult:
    """The planner's prediction of what the case measured."""
    from planner.catalog import find

    entry = find(case["model"])
    if entry is None:
        raise ValueError(f"case {case['id']}: model {case['model']!r} is not in the catalog")
    setup, extra = case_setup(case, stacks)
    est = estimate_memory(entry.spec(), setup, None, **extra)
    c = est.components
    reserved = est.torch_peak_bytes + c["allocator_overhead"]
    m = case["measures"]
    if m == "allocated":
        pred = est.torch_peak_bytes
    elif m == "oom":
        pred = est.device_bytes
    elif m == "reserved":
        pred = reserved
    elif m == "reserved_minus_init":
        pred = reserved - c["quantized_weights"] - c["unquantized_weights"] - c["adapter_weights"]
    elif m == "nvidia_smi":
        pred = est.device_bytes
    else:
        raise ValueError(f"case {case['id']}: unknown statistic {m!r}")
    measured = int(round(case["value"] * _UNITS[case["unit"]]))
    return CaseResult(case["id"], case["series"], m, measured, int(pred))


def run_all(path: Path = CASES_PATH) -> list[CaseResult]:
    data = load_cases(path)
    return [predict(c, data["stacks"]) for c in data["cases"]]


def series_summary(results: list[CaseResult]) -> dict[str, dict[str, float]]:
    """Per series: number of cases, median |error| and worst |error| (OOM cases excluded)."""
    out: dict[str, dict[str, float]] = {}
    by: dict[str, list[float]] = {}
    for r in results:
        if r.error is not None:
            by.setdefault(r.series, []).append(r.error)
    for series, errs in by.items():
        absolute = [abs(e) for e in errs]
        out[series] = {"n": len(errs), "median_abs": statistics.median(absolute), "worst_abs": max(absolute),
                       "median_signed": statistics.median(errs)}
    everything = [abs(r.error) for r in results if r.error is not None]
    if everything:
        out["all"] = {"n": len(everything), "median_abs": statistics.median(everything), "worst_abs": max(everything),
                      "median_signed": statistics.median([r.error for r in results if r.error is not None])}
    return out
