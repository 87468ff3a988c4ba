"""Validate the planner on whatever NVIDIA GPU is here: random-weights probes of a fixed matrix.

Run (from the repository root, on the GPU machine; nothing is downloaded):

    python bench/gpu_check.py                  # the matrix on this machine's GPU, about 8-10 min on one H200
    python bench/gpu_check.py --dry-run        # any machine: the matrix with its predictions, one tiny CPU case
    python bench/gpu_check.py --only 8b-lora-ckpt-mb1,70b-qlora-ckpt-mb1

Each case is `tuneplan probe --config CASE.toml --random-weights` (the real training path,
model built from the bundled catalog's config.json: `planner/models/`) in its own process with
its own time budget, so an out-of-memory error or a hang costs one case, not the matrix. A case
the card cannot hold (the planner's nvidia-smi figure above the card's free memory) or that the
remaining time budget cannot cover is skipped with the reason. Results: a Markdown and a CSV
table of predicted vs measured (torch peak allocated, reserved, nvidia-smi, tokens/s against the
throughput model, seconds per optimizer step) in `bench/results/` (`--results-dir`), named by
GPU and time, plus each case's probe.json.

Matrix: Llama-3.1-8B LoRA and QLoRA x checkpointing on/off x micro-batch 1/4 at 2048 tokens;
Llama-3.1-70B QLoRA with checkpointing; one MoE (Qwen3-30B-A3B LoRA, checkpointing); the
solver's own choice for Llama-3.1-8B on this card; one long-context case (Llama-3.1-8B QLoRA
r32 on all linear layers at 32k tokens with activation offloading, the tiled MLP, the chunked
RMSNorm, the host-resident embedding, the chunked loss and checkpointing:
tuneplan/training/long_context.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.setup import TrainSetup  # noqa: E402

MEMORY_TOLERANCE = 0.10
"""Error on a memory figure above which a row is flagged (the planner's memory model is tested
to within 5% of the CPU trace; the allocator's reserve and the driver's context carry more)."""
SPEED_TOLERANCE = 0.30
"""The throughput model's stated tolerance (docs/planning.md: +-30%)."""
TOTAL_BUDGET_S = 600
"""The whole matrix on one H200 (10 minutes; give --budget for less)."""
TARGET_GPU = "h200"
"""The card the predictions are shown for with --dry-run (no GPU here)."""
BASE = TrainSetup(method="lora", compute_dtype="bfloat16", lora_rank=16, lora_alpha=32, lora_dropout=0.05,
                  micro_batch=1, grad_accum=1, seq_len=2048, packing=False, grad_checkpointing=True,
                  optimizer="adamw", attn="sdpa", fused_ce=True)

LONG_CONTEXT = replace(BASE, method="qlora", lora_rank=32, lora_alpha=32, lora_dropout=0.0, lora_targets="all-linear",
                       seq_len=32768, grad_checkpointing=True, fused_ce=True, offload_activations=True,
                       tiled_mlp=True, chunked_norm=True, offload_embedding=True)


@dataclass
class Case:
    name: str
    model: str
    """Catalog name (planner/models/)."""
    setup: TrainSetup | None
    """None: the solver's own choice for this card."""
    budget_s: float
    status: str = "pending"
    reason: str = ""
    predicted: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    seconds: float | None = None


def matrix() -> list[Case]:
    cases = []
    for method in ("lora", "qlora"):
        for ckpt in (True, False):
            for mb in (1, 4):
                name = f"8b-{method}-{'ckpt' if ckpt else 'nockpt'}-mb{mb}"
                cases.append(Case(name, "llama-3.1-8b", replace(BASE, method=method, grad_checkpointing=ckpt,
                                                                micro_batch=mb), 75))
    cases.append(Case("70b-qlora-ckpt-mb1", "llama-3.1-70b", replace(BASE, method="qlora"), 210))
    # peft adapts the fused experts and the router (all-linear); no dropout on them (modeling.py)
    cases.append(Case("moe-qwen3-30b-a3b-lora-ckpt-mb1", "qwen3-30b-a3b", replace(BASE, lora_dropout=0.0), 150))
    cases.append(Case("8b-solver-choice", "llama-3.1-8b", None, 90))
    # long context (issue 20): Unsloth's setup with every long-context knob on, at 32k tokens
    cases.append(Case("long-8b-qlora-32k", "llama-3.1-8b", LONG_CONTEXT, 150))
    return cases


def hardware(dry_run: bool):
    """(planner Hardware, note): this machine's GPU (NVML), or the target card for --dry-run."""
    from planner.gpus import get_gpu
    from planner.solver import Hardware
    from tuneplan.services import planning

    if dry_run:
        gpu = get_gpu(TARGET_GPU)
        return Hardware(gpu=gpu, source="catalog"), f"dry run: predictions for {gpu.name} (no GPU used)"
    hw, notes, _ = planning.resolve_hardware(gpus=1)
    return hw, "; ".join(notes)


def predict(case: Case, hw) -> None:
    from tuneplan.services import planning, probing
    from tuneplan.services.models import resolve_model

    resolved = resolve_model(case.model)
    if case.setup is None:
        outcome = planning.plan(planning.PlanRequest(resolved=resolved, hardware=hw, gpus=1))
        case.setup = outcome.result.choice.setup
        if not outcome.result.fits:
            case.status, case.reason = "skipped", f"the solver finds nothing that fits {hw.gpu.name}"
    p = probing.predict(resolved.spec, hw, case.setup)
    case.predicted = {"torch_peak_bytes": p.torch_peak_bytes, "torch_reserved_bytes": p.reserved_bytes,
                      "device_bytes": p.device_bytes, "tokens_per_second": p.tokens_per_second,
                      "step_seconds": p.step_seconds}


def prepare(cases: list[Case], hw) -> None:
    """Predict every case; skip, with the reason, those the card cannot hold."""
    from tuneplan.services.probing import size

    usable = hw.usable_bytes()
    for c in cases:
        predict(c, hw)
        if c.status == "pending" and c.predicted["device_bytes"] > usable:
            c.status, c.reason = "skipped", f"needs {size(c.predicted['device_bytes'])}, {size(usable)} free on the card"


def run_case(case: Case, folder: Path, steps: int, warmup: int, extra_args: list[str] = ()) -> None:
    """One probe in its own process, under the case's time budget."""
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config
    from tuneplan.services import probing

    toml = folder / f"{case.name}.toml"
    save_config(RunConfig(model=ModelConfig(source=case.model), data=DataConfig(source="tuneplan:sample-chat"),
                          setup=case.setup), toml, overwrite=True)
    out = folder / f"{case.name}.json"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # nothing downloads
    t = time.perf_counter()
    data, line = probing.run_probe_process(["--config", str(toml), "--random-weights", "--steps", str(steps),
                                            "--warmup-steps", str(warmup), *extra_args],
                                           out, timeout=case.budget_s, env=env)
    case.seconds = time.perf_counter() - t
    if data is None:
        case.status, case.reason = "failed", line
        return
    case.status = "measured"
    m = data["measured"]
    case.measured = {"torch_peak_bytes": m.get("torch_peak_bytes"), "torch_reserved_bytes": m.get("torch_reserved_bytes"),
                     "device_bytes": m.get("process_bytes"), "tokens_per_second": m.get("tokens_per_second"),
                     "step_seconds": m.get("step_seconds"), "device": m.get("device"),
                     "process_source": m.get("process_source")}
    if m.get("device") == "cpu":  # the probe predicts the CPU step itself there; no GPU memory
        from tuneplan.services.probing import size

        case.predicted = {**case.predicted, "torch_peak_bytes": data["predicted"]["torch_peak_bytes"],
                          "torch_reserved_bytes": None, "device_bytes": None}
        case.measured["device_bytes"] = None
        case.reason = f"CPU: peak RSS {size(m.get('process_bytes'))}, host memory"


FIGURES = (("torch_peak_bytes", "torch peak", MEMORY_TOLERANCE), ("torch_reserved_bytes", "reserved", MEMORY_TOLERANCE),
           ("device_bytes", "nvidia-smi", MEMORY_TOLERANCE), ("tokens_per_second", "tokens/s", SPEED_TOLERANCE),
           ("step_seconds", "s/step", SPEED_TOLERANCE))


def describe(case: Case) -> str:
    from tuneplan.services.probing import describe as d

    return d(case.setup) if case.setup is not None else "solver's choice"


def table(cases: list[Case], hw_note: str, measured: bool) -> tuple[str, list[list]]:
    """(Markdown, CSV rows)."""
    from tuneplan.services.probing import _pct, _rate, _secs, error, size

    fmt = {"torch_peak_bytes": size, "torch_reserved_bytes": size, "device_bytes": size,
           "tokens_per_second": _rate, "step_seconds": _secs}
    head = ["case", "configuration", "status"]
    for _, label, _ in FIGURES:
        head += [f"{label} pred", f"{label} meas", "err"] if measured else [f"{label} pred"]
    md = [f"GPU check: {hw_note}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [["case", "model", "configuration", "status", "reason", "seconds"]
            + [f"{k}_{w}" for k, _, _ in FIGURES for w in ("predicted", "measured", "error")]]
    flagged = 0
    for c in cases:
        cells = [c.name, describe(c), c.status + (f" ({c.reason})" if c.reason else "")]
        row = [c.name, c.model, describe(c), c.status, c.reason, f"{c.seconds:.1f}" if c.seconds else ""]
        for key, _, tol in FIGURES:
            p, m = c.predicted.get(key), c.measured.get(key)
            e = error(p, m)
            mark = " ✗" if e is not None and abs(e) > tol else ""
            flagged += bool(mark)
            cells += [fmt[key](p), fmt[key](m), _pct(e) + mark] if measured else [fmt[key](p)]
            row += [p, m, None if e is None else round(e, 4)]
        md.append("| " + " | ".join(cells) + " |")
        rows.append(row)
    if measured:
        md += ["", f"err = (predicted - measured) / measured; ✗ beyond the tolerance (memory {MEMORY_TOLERANCE:.0%}, "
                   f"speed {SPEED_TOLERANCE:.0%}): {flagged} figure(s)."]
    return "\n".join(md) + "\n", rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the matrix with predictions; run one tiny CPU case")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help=f"seconds for the whole matrix (default {TOTAL_BUDGET_S})")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=1)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cases = matrix()
    if args.only:
        wanted = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = wanted - {c.name for c in cases}
        if unknown:
            print(f"gpu_check: error: unknown case(s) {', '.join(sorted(unknown))}; cases: "
                  f"{', '.join(c.name for c in cases)}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
    try:
        hw, note = hardware(args.dry_run)
    except Exception:  # no NVML / no GPU: one line, and the dry run is still there
        from tuneplan.services.gpu import default_probe

        print(f"gpu_check: error: no NVIDIA GPU here ({default_probe().status()}); on a machine without one run "
              "--dry-run", file=sys.stderr)
        return 2
    prepare(cases, hw)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results = Path(args.results_dir)
    folder = results / f"gpu_check-{'dry-run' if args.dry_run else hw.gpu.key}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for c in cases:
            if c.status == "pending":
                c.status = "predicted"
        matrix_md, _ = table(cases, note, measured=False)
        planned = list(cases)
        print(matrix_md)
        print(f"(matrix predicted in {time.perf_counter() - t0:.2f} s)")
        from tuneplan.services.presets import tiny_model_dir

        tiny = Case("tiny-cpu-random", str(tiny_model_dir(build=False)), None, 300)  # config.json only
        tiny.setup = replace(BASE, method="lora", compute_dtype="float32", seq_len=64, micro_batch=2,
                             grad_checkpointing=False, lora_dropout=0.0)
        from planner.solver import Hardware
        from tuneplan.services.presets import cpu_hardware

        cpu: Hardware = cpu_hardware()
        predict(tiny, cpu)
        run_case(tiny, folder, args.steps, args.warmup_steps, ["--cpu"])
        md, _ = table([tiny], "one tiny case on this machine's CPU (random weights; memory is host memory, "
                      "not GPU memory)", measured=True)
        print(md)
        _, rows = table(planned + [tiny], note, measured=True)
        md = matrix_md + "\n" + md
        cases = [tiny]
    else:
        deadline = t0 + args.budget
        for c in cases:
            if c.status != "pending":
                print(f"{c.name}: {c.status}: {c.reason}", flush=True)
                continue
            left = deadline - time.perf_counter()
            if left < min(c.budget_s, 30):
                c.status, c.reason = "skipped", f"the check's {args.budget:.0f} s budget is spent"
            else:
                c.budget_s = min(c.budget_s, left)
                run_case(c, folder, args.steps, args.warmup_steps)
            print(f"{c.name}: {c.status}" + (f": {c.reason}" if c.reason else "")
                  + (f" ({c.seconds:.0f} s)" if c.seconds else ""), flush=True)
        md, rows = table(cases, note, measured=True)
        print(md)
    name = folder.name
    (results / f"{name}.md").write_text(md, encoding="utf-8")
    with open(results / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    print(f"results: {results / name}.md, {results / name}.csv (probe reports in {folder}); "
          f"{time.perf_counter() - t0:.0f} s in all")
    return 0 if all(c.status != "failed" for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
