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


def _time_runs(argv, env, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def cold_plan(runs: int = 5) -> dict[str, list[float]]:
    """Wall time of a fresh `python -m tuneplan plan ...` process, seconds: as this shell
    runs it, and with Python's bytecode cache (what an installed package has; a shell with
    PYTHONDONTWRITEBYTECODE=1 recompiles every module on every start)."""
    import os
    import tempfile

    argv = [sys.executable, "-m", "tuneplan", "plan", "--model", "llama-3.1-8b", "--gpu", "rtx-3060-12gb"]
    env = dict(os.environ)
    out = {"as is": _time_runs(argv, env, runs)}
    with tempfile.TemporaryDirectory() as cache:
        cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache  # keep .pyc files out of the source tree
        _time_runs(argv, cached, 1)  # fill the cache
        out["bytecode cached"] = _time_runs(argv, cached, runs)
    out["bare python"] = _time_runs([sys.executable, "-c", "pass"], env, runs)
    return out


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

    cold = cold_plan()
    figures = ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in cold.items())
    print(f"cold `tuneplan plan --model llama-3.1-8b --gpu rtx-3060-12gb` (median of 5): {figures}  target < 500 ms")

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

    # the long-context path (docs/long-context.md): the --seq-len max search of the must-show plans
    fixed = {"lora_rank": 32, "lora_targets": "all-linear", "micro_batch": 1}
    for name in ("llama-3.1-8b", "llama-3.1-70b"):
        spec = load_spec(name)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = solve(spec, Hardware(card), Constraints(method="qlora", fixed=fixed, seq_len_max=True))
            runs.append(time.perf_counter() - t0)
        print(f"--seq-len max, {name} QLoRA r32 all-linear batch 1 on a100-80gb: median "
              f"{statistics.median(runs) * 1e3:.1f} ms ({r.evaluated} estimates; seq {r.choice.setup.seq_len}, "
              f"{r.choice.memory.device_bytes / 2**30:.1f} GiB, host "
              f"{r.choice.host_bytes() / 2**30:.0f} GiB)")

    from planner.throughput import CALIBRATION

    print("throughput calibration (predicted vs published tokens/s per GPU):")
    for point in CALIBRATION:
        t = estimate_throughput(load_spec(point.model), point.setup, get_gpu(point.gpu)).tokens_per_second
        print(f"  {point.row:<9} {point.model:<11} {point.gpu:<10} {point.setup.method:<6} {point.setup.attn:<6} "
              f"{t:7.0f} vs {point.tokens_per_second:7.0f}  {t / point.tokens_per_second - 1:+.0%}")


if __name__ == "__main__":
    main()
