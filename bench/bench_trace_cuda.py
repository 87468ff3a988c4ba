"""The planner against the CUDA-semantics trace of our training step, on a grid of full-size models.

Each case runs two optimizer steps of our real training path (tuneplan.training.modeling +
tuneplan.training.sft.build_trainer) on fake tensors with CUDA semantics
(`verification.memory_trace.trace_fake(..., semantics="cuda")`, see
verification/cuda_semantics.py) and compares the peak of live bytes (what
`torch.cuda.max_memory_allocated()` reads) with `planner.memory.estimate_memory(...)
.torch_peak_bytes` for the same setup (rows of exactly `seq_len` tokens, no padding).

    python bench/bench_trace_cuda.py --out /tmp/grid.jsonl            # run the grid (resumable)
    python bench/bench_trace_cuda.py --out /tmp/grid.jsonl --report   # only print the table
    python bench/bench_trace_cuda.py --cases llama-3.1-8b:lora:off:1:all --out /tmp/one.jsonl
    python bench/bench_trace_cuda.py --plans llama-3.1-8b@a100-80gb --out /tmp/plans.jsonl   # a plan's exact setup

Traces are slow (about a minute per 8B case, several for 70B, on one core; fake tensors cost
nothing per element, but every op costs about 0.1-0.3 ms of Python dispatch, and the tiled MLP
multiplies the MLP's ops by its shards: measured on one core, llama-3.1-8b cut to 2 layers at
131k tokens takes 34 s of CPU, 28.8k ops in 3.4 s untiled, 89k ops in 9.7 s at 524k untiled;
the full 8B at 32k 55 s of CPU; so a 70B at 128k, 80 layers x 16 shards, is about 10 minutes
of CPU and a 325k 8B about 25. Wall times on the shared 2-core machine: 8B 32k 222 s, 8B 128k
800 s, 70B 32k 640 s, 70B 128k 803 s, the 70B 48 GiB plan (4864 tokens, untiled) 2218 s): results are
appended to `--out` as they come, cases already there are skipped, and `--report` recomputes
the predictions from the stored traces with the current planner. Case syntax:
`model:method:ckpt(on|off):micro_batch:targets(all|attn)[:seq_len[:arch]]`; a plan case
`plan:model@gpu[@more plan arguments]` traces the setup `tuneplan plan --model model --gpu gpu
...` chooses (packing, the fused loss and every long-context knob it turns on included, the host
embedding `offload_embedding` too: its table then counts in the host bytes, not the device peak)
on that card's architecture; a long-context
case `long:model:seq_len[:arch]` traces Unsloth's long-context setup (QLoRA r32 on all linear
layers, micro-batch 1, rows of exactly seq_len tokens) with every long-context knob on:
activation offloading, tiled MLP, chunked RMSNorm, trl's chunked loss, checkpointing, LoRA
dropout 0 (rows stored before the chunked RMSNorm existed keep their setup without it). Any case
ending in `~L<n>` runs the model cut to its first n decoder layers (trace and prediction alike:
a quick look at per-layer effects, e.g. `long:llama-3.1-8b:131072~L3`); such cases stay out of
the CSV.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAMILIES = ("llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-7b", "qwen3-8b", "gemma-2-9b", "gemma-3-1b",
            "phi-3-mini", "mixtral-8x7b", "qwen3-30b-a3b", "llama-3.1-70b")


def grid() -> list[str]:
    """The deliverable grid: every family (a 70B and two MoE included), LoRA and QLoRA,
    checkpointing on and off, micro-batch 1 and 4, all-linear and attention targets at seq
    2048; a 512 / 8192 sweep on one 8B model."""
    out = []
    # ordered so that a partial run already covers every family: checkpointing off first
    for ckpt, mb, targets in (("off", 1, "all"), ("off", 4, "all"), ("on", 1, "all"), ("off", 1, "attn"),
                              ("on", 4, "all"), ("on", 1, "attn")):
        for model in FAMILIES:
            for method in ("lora", "qlora"):
                out.append(f"{model}:{method}:{ckpt}:{mb}:{targets}")
    for seq in (512, 8192):
        for method in ("lora", "qlora"):
            for ckpt in ("off", "on"):
                out.append(f"llama-3.1-8b:{method}:{ckpt}:1:all:{seq}")
    return out + LONG_CONTEXT


# Long context (issue 20): Unsloth's setup at 32k and 128k on an 8B and a 70B, and the longest
# sequence `tuneplan plan --seq-len max` finds for it on an 80 GB card and a 48 GiB one.
_UNSLOTH = "--method qlora --lora-r 32 --lora-targets all-linear --batch 1 --seq-len max"
LONG_CONTEXT = [f"long:{m}:{s}" for m in ("llama-3.1-8b", "llama-3.1-70b") for s in (32768, 131072)] + [
    f"plan:llama-3.1-8b@a100-80gb@{_UNSLOTH}", f"plan:llama-3.1-70b@a100-80gb@{_UNSLOTH}",
    f"plan:llama-3.1-70b@a100-80gb@{_UNSLOTH} --vram 48GiB"]


def long_setup(seq_len: int):
    """The long-context setup of a `long:` case (see the module doc)."""
    from planner.setup import TrainSetup

    return TrainSetup(method="qlora", lora_rank=32, lora_alpha=32, lora_dropout=0.0, lora_targets="all-linear",
                      micro_batch=1, seq_len=seq_len, packing=False, grad_checkpointing=True, fused_ce=True,
                      offload_activations=True, tiled_mlp=True, chunked_norm=True, optimizer="adamw")


def parse_case(case: str):
    from planner.setup import ATTENTION_TARGETS, TrainSetup

    parts = case.split(":")
    if parts[0] == "long":
        return parts[1], long_setup(int(parts[2])), parts[3] if len(parts) > 3 else "hopper"
    model, method, ckpt, mb, targets = parts[:5]
    seq = int(parts[5]) if len(parts) > 5 else 2048
    arch = parts[6] if len(parts) > 6 else "hopper"
    if targets == "all":
        lora_targets = "all-linear"
    else:  # the model's own attention projections (phi3: qkv_proj, o_proj)
        from planner import catalog

        lora_targets = tuple(catalog.load_spec(catalog.get(model).name).attention_module_names()) or ATTENTION_TARGETS
    setup = TrainSetup(method=method, grad_checkpointing=ckpt == "on", micro_batch=int(mb), seq_len=seq,
                       lora_targets=lora_targets,
                       packing=False, optimizer="adamw")
    return model, setup, arch


def plan_setup(model: str, gpu: str, extra: str = ""):
    """(catalog model, TrainSetup, arch) of what `tuneplan plan --model --gpu [extra]` chooses."""
    import shlex
    import subprocess

    from planner.gpus import get_gpu
    from planner.setup import TrainSetup

    out = subprocess.run([sys.executable, "-m", "tuneplan", "plan", "--model", model, "--gpu", gpu, "--json",
                          *shlex.split(extra)],
                         capture_output=True, text=True, check=False).stdout
    data = json.loads(out)
    from dataclasses import fields

    known = {f.name for f in fields(TrainSetup)}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items() if k in known}
    return data["model"]["name"], TrainSetup(**cfg), get_gpu(gpu).arch


def gpu_for(arch: str):
    from planner.gpus import GPU

    return GPU(key=arch, name=arch, memory_bytes=80 * GiB, bf16=True, arch=arch)


def model_config(model: str, layers: int | None = None) -> dict:
    """The catalog model's config.json, cut to its first `layers` decoder layers if given."""
    from planner import catalog

    config = dict(catalog.get(model).config)
    if layers:
        config["num_hidden_layers"] = layers
        for key in ("layer_types",):  # per-layer lists follow the cut
            if isinstance(config.get(key), list):
                config[key] = config[key][:layers]
    return config


def split_layers(case: str) -> tuple[str, int | None]:
    """(`case` without its `~L<n>` suffix, n or None)."""
    if "~L" in case:
        base, n = case.rsplit("~L", 1)
        return base, int(n)
    return case, None


def predict(model: str, setup, arch: str, layers: int | None = None):
    from planner import catalog
    from planner.memory import estimate_memory

    spec = catalog.load_spec(catalog.get(model).name)
    if layers:
        from planner.spec import spec_from_config

        spec = spec_from_config(model_config(model, layers), f"{model}~L{layers}")
    return estimate_memory(spec, setup, gpu_for(arch), padded_rows=False)


TRACE_GRAD_ACCUM = 2
"""Micro-batches per optimizer step the trace runs (at most): a step's memory does not depend on
the accumulation beyond two. From the second micro-batch on the accumulated gradients exist and
every micro-batch has the same shapes (planner/memory.py `g_acc`: `grads if grad_accum > 1`), so
a plan's 16 micro-batches trace as 2, 8x faster; the record holds the setup traced."""


def run(cases: list[str], out: Path) -> None:
    import torch

    from verification.memory_trace import trace_fake

    torch.set_num_threads(1)
    done = set()
    if out.exists():
        done = {json.loads(line)["case"] for line in out.read_text().splitlines() if line.strip()}
    for case in cases:
        if case in done:
            continue
        name, layers = split_layers(case)
        if name.startswith("plan:"):
            model, setup, arch = plan_setup(*name[len("plan:"):].split("@"))
        else:
            model, setup, arch = parse_case(name)
        setup = replace(setup, grad_accum=min(setup.grad_accum, TRACE_GRAD_ACCUM))
        t = time.perf_counter()
        try:
            r = trace_fake(model_config(model, layers), setup, semantics="cuda", arch=arch)
        except Exception as e:  # keep going: one family's failure must not stop the grid
            print(f"{case}: trace failed: {type(e).__name__}: {e}", flush=True)
            continue
        rec = {"case": case, "model": model, "arch": arch, "setup": asdict(setup), "peak_bytes": r.peak_bytes,
               "host_peak_bytes": r.host_peak_bytes, "layers": layers,
               "peak_where": r.peak_where, "peak_breakdown": r.peak_breakdown, "static": r.static,
               "phases": r.phases, "marks": r.marks, "mark_ops": r.mark_ops,
               "backends": r.meta.get("sdpa_backends"), "seconds": round(time.perf_counter() - t, 1)}
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"{case}: {r.peak_bytes / GiB:.3f} GiB at {r.peak_where} ({rec['seconds']} s)", flush=True)


def _records(out: Path) -> list[dict]:
    """The traced cases of `out`, the last record of each case."""
    recs = {}
    for line in out.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            recs[rec["case"]] = rec
    return list(recs.values())


def report(out: Path) -> tuple[float, float]:
    from planner.setup import TrainSetup

    rows = _records(out)
    errs = []
    print(f"{'case':<40} {'trace GiB':>10} {'plan GiB':>10} {'error':>7}  {'trace peak at':<20} {'plan peak at'}")
    for rec in rows:
        setup = TrainSetup(**{k: tuple(v) if isinstance(v, list) else v for k, v in rec["setup"].items()})
        if rec["case"].startswith("plan:") and not rec.get("layers"):
            from planner import catalog
            from planner.gpus import get_gpu
            from planner.memory import estimate_memory

            gpu = get_gpu(rec["case"].split("@")[1])
            est = estimate_memory(catalog.load_spec(rec["model"]), setup, gpu)
        else:
            est = predict(rec["model"], setup, rec["arch"], rec.get("layers"))
        err = est.torch_peak_bytes / rec["peak_bytes"] - 1
        errs.append(err)
        where = next((k[len("peak_phase_"):] for k in est.details if k.startswith("peak_phase_")), "?")
        print(f"{rec['case']:<40} {rec['peak_bytes'] / GiB:>10.3f} {est.torch_peak_bytes / GiB:>10.3f} "
              f"{err:>+7.2%}  {rec['peak_where']:<20} {where}")
        if rec.get("host_peak_bytes"):  # activation offloading, the host embedding: the host RAM they hold
            host = est.host_bytes()
            print(f"{'  host RAM (offload)':<40} {rec['host_peak_bytes'] / GiB:>10.3f} {host / GiB:>10.3f} "
                  f"{host / rec['host_peak_bytes'] - 1:>+7.2%}")
    if not errs:
        return 0.0, 0.0
    med = statistics.median(abs(e) for e in errs)
    worst = max(errs, key=abs)
    print(f"{len(errs)} cases: median |error| {med:.2%}, worst {worst:+.2%}")
    return med, worst


CSV_FIELDS = ["case", "model", "arch", "setup", "trace_peak_bytes", "trace_peak_where", "trace_host_peak_bytes"]


def write_csv(out: Path, path: Path) -> None:
    """case, model, arch, setup (JSON), traced peak bytes, peak phase, host bytes (activation
    offloading, the host embedding's table and lookup): what the tests need. Rows already in `path` for cases `out` does not hold are
    kept (the grid is traced in parts)."""
    import csv

    rows = {r["case"]: [r["case"], r["model"], r["arch"], json.dumps(r["setup"], sort_keys=True), r["peak_bytes"],
                        r["peak_where"], r.get("host_peak_bytes", 0)] for r in _records(out) if not r.get("layers")}
    kept = []
    if path.exists():
        with path.open(newline="") as fh:
            kept = [[row.get(k) or 0 for k in CSV_FIELDS] for row in csv.DictReader(fh) if row["case"] not in rows]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")  # the stored grid keeps its LF lines
        w.writerow(CSV_FIELDS)
        w.writerows(kept + list(rows.values()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON-lines file of traced cases (appended, resumable)")
    ap.add_argument("--cases", help="comma-separated cases (default: the whole grid)")
    ap.add_argument("--plans", help="comma-separated model@gpu: trace the setup `tuneplan plan` chooses")
    ap.add_argument("--report", action="store_true", help="only print the table from --out")
    ap.add_argument("--csv", help="also write the traced peaks as CSV (tests/data/traces/cuda_grid.csv)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.report:
        cases = [f"plan:{p}" for p in args.plans.split(",")] if args.plans else \
            (args.cases.split(",") if args.cases else grid())
        run(cases, out)
    if out.exists():
        report(out)
        if args.csv:
            write_csv(out, Path(args.csv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
