"""Full-size memory trace on fake tensors vs the planner's prediction (no GPU, no weights).

Runs two optimizer steps of our real training path (tuneplan.training.modeling +
tuneplan.training.sft.build_trainer) for catalog models on fake tensors
(`verification.memory_trace.trace_fake`) and prints the measured peak of live tensor bytes next
to `planner.memory.estimate_memory(...).torch_peak_bytes`.

    python bench/bench_trace_meta.py                     # llama-3.1-8b and llama-3.1-70b, LoRA + QLoRA
    python bench/bench_trace_meta.py qwen2.5-7b --seq-len 4096 --batch 2
    python bench/bench_trace_meta.py mixtral-8x7b --json-dir tests/data/traces/fullsize

Caveat: the fake step runs the CPU variant of trl's chunked LM head (no Triton), which keeps
fp32 copies of each [4096 x 32768] tile; on CUDA the Triton kernel does not (see
docs/training-path.md). bench/bench_trace_cuda.py traces the step with CUDA semantics. Takes about a minute per 70B case on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # verification/ is not installed (development only)
    sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["llama-3.1-8b", "llama-3.1-70b"])
    ap.add_argument("--methods", default="lora,qlora")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--fused-ce", action="store_true", help="trl's chunked LM head instead of transformers' loss")
    ap.add_argument("--json-dir", help="also write each trace (breakdowns, creating ops) with the prediction here")
    args = ap.parse_args()

    import torch

    from planner import catalog
    from planner.memory import estimate_memory
    from planner.setup import TrainSetup
    from verification.memory_trace import trace_fake

    torch.set_num_threads(1)
    base = TrainSetup(seq_len=args.seq_len, micro_batch=args.batch, lora_rank=args.rank, packing=False,
                      grad_checkpointing=not args.no_checkpointing, optimizer="adamw", fused_ce=args.fused_ce)
    print("measured = live tensor bytes of the fake step (CPU variant); predicted = estimate_memory(device='cpu');")
    print("cuda = the planner's figure for the same setup on a GPU (Triton chunked head, bool dropout masks)")
    print(f"{'model':<16} {'method':<6} {'measured GiB':>12} {'predicted GiB':>13} {'error':>7} {'cuda GiB':>9}  "
          f"{'peak at':<16} {'s':>5}")
    for name in args.models:
        entry = catalog.get(name)
        spec = catalog.load_spec(entry.name)
        for method in args.methods.split(","):
            setup = replace(base, method=method)
            t = time.perf_counter()
            result = trace_fake(dict(entry.config), setup)
            dt = time.perf_counter() - t
            pred = estimate_memory(spec, setup, device="cpu", padded_rows=False).torch_peak_bytes
            cuda = estimate_memory(spec, setup).torch_peak_bytes
            err = pred / result.peak_bytes - 1
            print(f"{entry.name:<16} {method:<6} {result.peak_bytes / GiB:>12.3f} {pred / GiB:>13.3f} {err:>+7.1%} "
                  f"{cuda / GiB:>9.3f}  {result.peak_where:<16} {dt:>5.0f}")
            print("    measured at peak:", {k: round(v / GiB, 3) for k, v in result.peak_breakdown.items()})
            if args.json_dir:
                out = Path(args.json_dir)
                out.mkdir(parents=True, exist_ok=True)
                data = json.loads(result.to_json())
                est = estimate_memory(spec, setup, device="cpu", padded_rows=False)
                data["predicted"] = {"torch_peak_bytes": est.torch_peak_bytes, "components": est.components,
                                     "details": est.details, "cuda_torch_peak_bytes": cuda}
                tag = f"{entry.name}-{method}-b{setup.micro_batch}-s{setup.seq_len}{'-fusedce' if setup.fused_ce else ''}"
                (out / f"{tag}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
