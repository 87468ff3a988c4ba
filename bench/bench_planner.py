"""Planner speed: cold `tuneplan plan` wall time, one estimate, a full 70B solver search.

Run: `python bench/bench_planner.py` (from the repository root, venv active). Prints
figures; asserts nothing (targets: cold plan < 0.5 s, one estimate < 1 ms, 70B search on an
80 GB card < 100 ms).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cold_plan(runs: int = 5) -> list[float]:
    """Wall time of a fresh `python -m tuneplan plan ...` process, seconds."""
    argv = [sys.executable, "-m", "tuneplan", "plan", "--model", "llama-3.1-8b", "--gpu", "rtx-3060-12gb"]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    baseline = []
    for _ in range(runs):  # the interpreter alone, for context
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t0)
    return times, baseline


def per_call(fn, n: int) -> float:
    fn()  # warm caches
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    from planner.catalog import load_spec
    from planner.gpus import get_gpu
    from planner.memory import estimate_memory
    from planner.setup import TrainSetup
    from planner.solver import Constraints, Hardware, solve
    from planner.throughput import estimate_throughput

    times, baseline = cold_plan()
    print(f"cold `tuneplan plan --model llama-3.1-8b --gpu rtx-3060-12gb`: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f} ms; bare python start {statistics.median(baseline) * 1000:.0f} ms)  target < 500 ms")

    for name, gpu in (("llama-3.1-8b", "rtx-4090"), ("llama-3.1-70b", "a100-80gb")):
        spec, card = load_spec(name), get_gpu(gpu)
        setup = TrainSetup(method="qlora", micro_batch=2, seq_len=2048)
        mem = per_call(lambda: estimate_memory(spec, setup, card), 300)
        thr = per_call(lambda: estimate_throughput(spec, setup, card), 300)
        print(f"one estimate, {name} ({spec.num_layers} layers): memory {mem * 1e3:.3f} ms + throughput {thr * 1e3:.3f} ms "
              f"= {(mem + thr) * 1e3:.3f} ms  target < 1 ms")

    spec, card = load_spec("llama-3.1-70b"), get_gpu("a100-80gb")
    runs = []
    for _ in range(10):
        t0 = time.perf_counter()
        r = solve(spec, Hardware(card), Constraints())
        runs.append(time.perf_counter() - t0)
    print(f"full solver search, llama-3.1-70b on a100-80gb: median {statistics.median(runs) * 1e3:.1f} ms "
          f"({r.evaluated} estimates; choice: {r.choice.describe()})  target < 100 ms")
    spec = load_spec("qwen2.5-72b")
    runs = []
    for _ in range(10):
        t0 = time.perf_counter()
        r = solve(spec, Hardware(get_gpu("h100")), Constraints(prefer_accuracy=True, effective_batch=64))
        runs.append(time.perf_counter() - t0)
    print(f"widest search (qwen2.5-72b on h100, full+LoRA+QLoRA, effective batch 64): median "
          f"{statistics.median(runs) * 1e3:.1f} ms ({r.evaluated} estimates)")


if __name__ == "__main__":
    main()
