"""Memory model vs published GPU measurements: per-case and per-series error, estimate speed.

Run: `python bench/bench_memory_calibration.py` (repository root, venv active). Prints every
case of tests/data/calibration/cases.json (measured, predicted, error), then per data series
the number of rows, median and worst |error| and the median signed error, then the time of
one estimate (8B and 70B). Asserts nothing; tests/planner/test_calibration.py holds the
tolerances.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.catalog import find  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402
from verification.memory_calibration import load_cases, run_all, series_summary  # noqa: E402
from planner.setup import TrainSetup  # noqa: E402


def main() -> None:
    results = run_all()
    print(f"{'case':6s} {'series':52s} {'statistic':20s} {'measured GiB':>12s} {'predicted GiB':>13s} {'error':>7s}")
    for r in results:
        err = "OOM ok" if r.error is None and r.predicted_bytes > r.measured_bytes else (
            "OOM MISS" if r.error is None else f"{100 * r.error:+.1f}%")
        print(f"{r.id:6s} {r.series[:52]:52s} {r.measures:20s} {r.measured_bytes / 2**30:12.2f} "
              f"{r.predicted_bytes / 2**30:13.2f} {err:>7s}")
    print()
    print(f"{'series':56s} {'n':>3s} {'median |err|':>12s} {'worst |err|':>11s} {'median err':>10s}")
    for series, s in series_summary(results).items():
        print(f"{series[:56]:56s} {s['n']:3d} {100 * s['median_abs']:11.1f}% {100 * s['worst_abs']:10.1f}% "
              f"{100 * s['median_signed']:+9.1f}%")
    excluded = load_cases()["excluded"]
    print(f"\nexcluded row groups: {len(excluded)} (reasons in tests/data/calibration/cases.json)")
    print()
    for name in ("llama-3.1-8b", "llama-3.1-70b"):
        spec = find(name).spec()
        setup = TrainSetup()
        estimate_memory(spec, setup)
        n = 500
        t0 = time.perf_counter()
        for _ in range(n):
            estimate_memory(spec, setup)
        print(f"one estimate, {name}: {(time.perf_counter() - t0) / n * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
