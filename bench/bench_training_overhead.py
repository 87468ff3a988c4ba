"""Training overhead of tuneplan vs a minimal hand-written trl script, same settings.

    python bench/bench_training_overhead.py [--steps 200] [--repeats 3]

Both sides train the bundled tiny Llama-style model (`tuneplan.training.tiny`) with LoRA on
the bundled sample chat dataset on the CPU, with identical knobs (micro-batch 4, seq len 64,
no packing, adamw, fp32, logging every step). tuneplan's side is the worker's real path:
`modeling.load_for_training` + `data.prepare_data` + `sft.build_trainer` + the events
callback writing `events.jsonl`/`status.json` into a run folder. The hand-written side is
`from_pretrained` + `get_peft_model` + `SFTTrainer` with nothing else. The timed part is
`trainer.train()` (the per-step cost; loading is the same libraries on both sides). Runs
alternate, the median and the best of each are compared, in wall and in CPU
time (CPU time is the steadier figure on a shared machine). Prints the figures and the ratio (target < 1.03).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def settings(model_dir: Path, steps: int):
    from planner.setup import TrainSetup
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from tuneplan.data import SAMPLE_CHAT

    setup = TrainSetup(method="lora", compute_dtype="float32", micro_batch=4, grad_accum=1, seq_len=64,
                       packing=False, grad_checkpointing=False, optimizer="adamw", attn="sdpa", fused_ce=True,
                       lora_rank=8, lora_alpha=16, lora_dropout=0.0)
    return RunConfig(model=ModelConfig(source=str(model_dir)), data=DataConfig(source=str(SAMPLE_CHAT)),
                     setup=setup, training=TrainingConfig(max_steps=steps, learning_rate=3e-3, warmup_ratio=0.0,
                                                          logging_steps=1, save_steps=10**6))


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(). CPU time is what a shared,
    loaded machine distorts least (torch runs on one thread here)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def run_tuneplan(config, root: Path) -> tuple[float, float]:
    from tuneplan.events import Status
    from tuneplan.services.launcher import prepare_run
    from tuneplan.training.callbacks import RunControl, RunEventsCallback
    from tuneplan.training.data import prepare_data
    from tuneplan.training.modeling import load_for_training
    from tuneplan.training.sft import build_trainer

    run_dir = prepare_run(config, root)
    model, tok, notes = load_for_training(config.model.source, config.setup, device="cpu")
    data = prepare_data(config, tok, notes)
    cb = RunEventsCallback(run_dir, config, Status(), RunControl())
    trainer = build_trainer(config, model, tok, data.train, None, [cb], output_dir=str(run_dir / "checkpoints"))
    return _timed(trainer.train)


def run_plain(config, out: Path) -> tuple[float, float]:
    """What a user would write by hand with trl and peft."""
    import json

    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    s = config.setup
    tok = AutoTokenizer.from_pretrained(config.model.source)
    model = AutoModelForCausalLM.from_pretrained(config.model.source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = []
    for line in Path(config.data.source).read_text().splitlines():
        msgs = json.loads(line)["messages"]
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=s.micro_batch, gradient_accumulation_steps=1,
                     max_length=s.seq_len, packing=False, gradient_checkpointing=False, bf16=False, fp16=False,
                     optim="adamw_torch", learning_rate=3e-3, max_steps=config.training.max_steps, warmup_steps=0.0,
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                     dataloader_pin_memory=False, seed=42, data_seed=42, lr_scheduler_type="cosine")
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    return _timed(trainer.train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import logging

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    logging.disable(logging.INFO)
    torch.set_num_threads(1)
    from tuneplan.training.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="tuneplan-bench-") as tmp:
        tmp = Path(tmp)
        config = settings(build_tiny_model(tmp / "tiny"), args.steps)
        ours, plain = [], []
        run_plain(config, tmp / "warmup")  # first-use costs (kernels, allocator) outside the figures
        for i in range(args.repeats):
            plain.append(run_plain(config, tmp / f"plain-{i}"))
            (tmp / f"runs-{i}").mkdir()
            ours.append(run_tuneplan(config, tmp / f"runs-{i}"))
    print(f"tiny LoRA, {args.steps} steps, CPU, 1 thread, {args.repeats} runs each")
    for label, idx in (("wall", 0), ("CPU", 1)):
        a = statistics.median(x[idx] for x in ours)
        b = statistics.median(x[idx] for x in plain)
        best_a, best_b = min(x[idx] for x in ours), min(x[idx] for x in plain)
        print(f"  {label:4s} hand-written trl: median {b:.3f} s ({args.steps / b:.1f} steps/s), best {best_b:.3f} s")
        print(f"  {label:4s} tuneplan:         median {a:.3f} s ({args.steps / a:.1f} steps/s), best {best_a:.3f} s")
        print(f"  {label:4s} ratio tuneplan / hand-written: median {a / b:.3f}, best {best_a / best_b:.3f} "
              f"(target < 1.03)")


if __name__ == "__main__":
    main()
