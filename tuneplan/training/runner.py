"""The training process of a run: `python -m tuneplan.training.runner RUN_DIR`.

Two processes, both started detached in the run's own session by the launcher:

- the **supervisor** (`runner RUN_DIR`, no torch): starts the worker, waits for it, and on an
  out-of-memory exit re-plans (`tuneplan.training.recovery`), rewrites `config.toml` (the
  previous one is kept as `config.attempt-N.toml`), writes a `replan` event and starts a new
  worker that resumes from the last checkpoint; at most `recovery.max_retries` times. A worker
  that dies without a final status (killed, segfault) is recorded as `crashed` with the log tail.
- the **worker** (`runner RUN_DIR --worker`): loads the model (`modeling.load_for_training`),
  the data (`data.prepare_data`), builds the trainer (`sft.build_trainer`), trains with
  `callbacks.RunEventsCallback`, saves the adapter with its tokenizer and a model card.

Signals: SIGTERM/SIGINT -> checkpoint at the end of the current step, phase `stopped`;
SIGHUP is ignored (the run must outlive the terminal). stdout/stderr are `train.log`.
Nothing here writes the Hub token or the environment anywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tuneplan.config import RunConfig, load_config, save_config
from tuneplan.training import distributed
from tuneplan.errors import UserError
from tuneplan.events import (
    ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, FINAL_PHASES, LOG_FILE, MODEL_DIR, Status, append_event,
    last_checkpoint, make_event, read_status, write_status,
)

EXIT_OK = 0
EXIT_FAILED = 3
EXIT_OOM = 75
"""Worker exit code: out of memory (the supervisor re-plans)."""
SUPERVISOR_PID_ENV = "TUNEPLAN_SUPERVISOR_PID"
LOG_TAIL_LINES = 20
# Progress bars off in the child: the log is plain lines (no carriage returns).
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of `train.log` (carriage-return segments reduced to their last)."""
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    out = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return [line for line in out if line.strip()][-lines:]


def _event(run_dir: Path, kind: str, **fields) -> None:
    if not distributed.is_main_process():  # several ranks: rank 0 writes the run's events
        return
    append_event(run_dir, make_event(kind, **fields))


def _finish(run_dir: Path, status: Status, phase: str, *, error: str | None = None, message: str | None = None) -> None:
    status.phase = phase
    if error is not None:
        status.error = error
        sys.stdout.flush()
        sys.stderr.flush()
        status.log_tail = log_tail(run_dir)
    if not distributed.is_main_process():  # several ranks: rank 0 owns status.json
        return
    _event(run_dir, "phase", phase=phase, **({"message": message or error} if (message or error) else {}))
    write_status(run_dir, status)


# --- worker --------------------------------------------------------------------------------------

class WorkerResult:
    """What an in-process run leaves (tests use the trainer to compare logits after reload)."""

    def __init__(self, exit_code: int, trainer=None, tokenizer=None):
        self.exit_code = exit_code
        self.trainer = trainer
        self.tokenizer = tokenizer


def _setup_logging() -> None:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()


def write_model_card(directory: Path, config: RunConfig, status: Status, notes: list[str]) -> None:
    s, t = config.setup, config.training
    from tuneplan import __version__

    lines = [
        f"# {status.run_name or directory.parent.name}",
        "",
        f"A {'LoRA adapter' if s.method != 'full' else 'fully fine-tuned model'} trained by tuneplan {__version__}.",
        "",
        f"- base model: `{config.model.source}`" + (f" (revision {config.model.revision})" if config.model.revision else ""),
        f"- dataset: `{config.data.source}`",
        f"- method: {s.method}" + (f" ({s.quant_type}, double quant {s.double_quant})" if s.method == "qlora" else ""),
        f"- LoRA: rank {s.lora_rank}, alpha {s.lora_alpha}, dropout {s.lora_dropout}, targets {s.lora_targets}",
        f"- batch: micro-batch {s.micro_batch} x accumulation {s.grad_accum} x GPUs {s.num_gpus} "
        f"= effective {s.effective_batch()}; sequence length {s.seq_len}; packing {s.packing}",
        f"- optimizer {s.optimizer}, learning rate {t.learning_rate} ({t.lr_scheduler}), compute dtype {s.compute_dtype}",
        f"- steps: {status.step}" + (f", final training loss {status.loss:.4f}" if status.loss is not None else ""),
        "",
        "Use it with `tuneplan chat RUN` or merge it with `tuneplan export RUN --merge`; with peft:",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        f"model = AutoPeftModelForCausalLM.from_pretrained({str(directory)!r})",
        "```",
    ]
    if notes:
        lines += ["", "## Notes from the run", ""] + [f"- {n}" for n in notes]
    (directory / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_worker(run_dir: Path, *, install_signals: bool = True) -> WorkerResult:
    """Train one attempt of a run in this process; the status and events say how it ended."""
    import torch

    from tuneplan.training.callbacks import RunControl, RunEventsCallback

    run_dir = Path(run_dir)
    status = read_status(run_dir) or Status()
    status.run_name = status.run_name or run_dir.name
    sup = os.environ.get(SUPERVISOR_PID_ENV)
    status.pids = ([int(sup)] if sup else []) + [os.getpid()]
    status.started_at = status.started_at or time.time()
    status.error = None
    status.log_tail = []
    control = RunControl()
    if install_signals:
        signal.signal(signal.SIGTERM, lambda *_: control.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: control.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    trainer = tokenizer = None
    try:
        config = load_config(run_dir / CONFIG_FILE)
        status.effective_batch = config.effective_batch()
        callback = RunEventsCallback(run_dir, config, status, control)
        callback.phase("loading", f"model {config.model.source} ({config.setup.method})")
        _setup_logging()
        from tuneplan.training.data import prepare_data
        from tuneplan.training.modeling import load_for_training
        from tuneplan.training.sft import build_trainer

        model, tokenizer, notes = load_for_training(config.model.source, config.setup,
                                                    trust_remote_code=config.model.trust_remote_code,
                                                    device=distributed.load_device())
        _event(run_dir, "environment", **environment_facts())  # presets issue: evidence for `presets save`
        if control.stop_requested:
            _finish(run_dir, status, "stopped", message=f"{control.stop_signal} before training started")
            return WorkerResult(EXIT_OK)
        callback.phase("tokenizing", f"dataset {config.data.source}")
        data = prepare_data(config, tokenizer, notes)
        for note in notes:
            _event(run_dir, "message", level="info", text=note)
        _event(run_dir, "data", examples=data.examples, dropped_too_long=data.dropped_too_long,
               truncated=data.truncated, format=data.format, multi_turn=data.multi_turn,
               every_assistant_turn=data.every_turn, train_examples=len(data.train),
               eval_examples=len(data.eval) if data.eval is not None else 0)
        from tuneplan.training import tracking

        tracking.prepare_environment(run_dir, config)
        trainer = build_trainer(config, model, tokenizer, data.train, data.eval, [callback],
                                output_dir=str(run_dir / CHECKPOINTS_DIR))
        if config.training.report_to != "none":
            trainer.add_callback(tracking.PlanToTrackerCallback(trainer, config))
        if control.stop_requested:
            _finish(run_dir, status, "stopped", message=f"{control.stop_signal} before training started")
            return WorkerResult(EXIT_OK, trainer, tokenizer)
        resume = config.resume_from if config.resume_from and Path(config.resume_from).is_dir() else None
        if resume:
            _event(run_dir, "message", level="info", text=f"resuming from {resume}")
        try:
            trainer.train(resume_from_checkpoint=resume)
        except RuntimeError as exc:  # some CUDA paths (bitsandbytes, cuBLAS) raise a plain RuntimeError
            if "out of memory" in str(exc).lower() and not isinstance(exc, torch.OutOfMemoryError):
                raise torch.OutOfMemoryError(str(exc)) from exc
            raise
        if control.stop_requested and trainer.state.global_step < trainer.state.max_steps:
            _finish(run_dir, status, "stopped",
                    message=f"{control.stop_signal}: checkpoint saved at step {status.step}")
            return WorkerResult(EXIT_OK, trainer, tokenizer)
        callback.phase("saving")
        out = run_dir / (MODEL_DIR if config.setup.method == "full" else ADAPTER_DIR)
        distributed.save_final_model(trainer, out)
        if distributed.is_main_process():
            tokenizer.save_pretrained(out)
            write_model_card(out, config, status, notes)
        _event(run_dir, "message", level="info", text=f"saved {out.name}/ ({config.setup.method})")
        loss = f"final loss {status.loss:.4f}" if status.loss is not None else "finished"
        _finish(run_dir, status, "done", message=f"{loss} after {status.step} steps")
        return WorkerResult(EXIT_OK, trainer, tokenizer)
    except torch.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        # any rank may run out of memory: it says so itself (the supervisor re-plans on it)
        append_event(run_dir, make_event("message", level="error", text=f"out of memory at step {status.step + 1}: "
                                         f"{first}", **({"rank": distributed.rank()} if distributed.world_size() > 1 else {})))
        status.error = f"out of memory at step {status.step + 1}"
        write_status(run_dir, status)
        return WorkerResult(EXIT_OOM, trainer, tokenizer)
    except UserError as exc:
        print(f"tuneplan: error: {exc}", flush=True)
        _finish(run_dir, status, "failed", error=str(exc))
        return WorkerResult(EXIT_FAILED, trainer, tokenizer)
    except Exception as exc:  # a bug or a library failure: full traceback in train.log
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = {"loading": "while loading the model", "tokenizing": "while preparing the data",
                 "training": f"at step {status.step + 1}", "evaluating": "while evaluating",
                 "saving": "while saving"}.get(status.phase, f"in phase {status.phase}")
        _finish(run_dir, status, "failed", error=f"{where}: {type(exc).__name__}: {first} (see train.log)")
        return WorkerResult(EXIT_FAILED, trainer, tokenizer)


def environment_facts() -> dict:
    """Where this attempt trains, for a preset's `[evidence]` (`tuneplan presets save --from RUN`):
    device, GPU name and memory (bytes), driver and CUDA versions, library versions."""
    from importlib import metadata

    import torch

    facts: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu"}
    for dist in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate"):
        try:
            facts[f"{dist}_version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if not torch.cuda.is_available():
        facts["gpu_name"] = "cpu"
        return facts
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    facts.update(gpu_name=props.name, gpu_memory_bytes=int(props.total_memory), cuda_version=torch.version.cuda)
    try:
        from tuneplan.services.gpu import default_probe

        gpus = default_probe().probe()
        if gpus:
            facts["driver_version"] = gpus[0].driver_version
    except Exception:  # the driver version is decoration: never fail a run for it
        pass
    return facts


# --- supervisor ------------------------------------------------------------------------------------

def _attempt_config_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"config.attempt-{attempt}.toml"


def replan(run_dir: Path, status: Status) -> bool:
    """After an OOM exit: write the next configuration and a `replan` event. False when no
    retry is left (the status is then final: failed)."""
    from dataclasses import replace

    from tuneplan.training.recovery import replan_after_oom

    config = load_config(run_dir / CONFIG_FILE)
    attempt = status.attempt + 1
    reason = status.error or "out of memory"
    if attempt > config.recovery.max_retries:
        _finish(run_dir, status, "failed",
                error=f"{reason}; gave up after {config.recovery.max_retries} re-plan(s) (recovery.max_retries)")
        return False
    nxt = replan_after_oom(config.setup, allow_qlora=config.recovery.allow_qlora)
    if nxt is None:
        hint = "" if config.recovery.allow_qlora or config.setup.method != "lora" else \
            " (set recovery.allow_qlora = true to let it switch to QLoRA)"
        _finish(run_dir, status, "failed",
                error=f"{reason}; nothing smaller to try: micro-batch 1 with checkpointing{hint}")
        return False
    setup, changes = nxt
    ckpt = last_checkpoint(run_dir)
    save_config(config, _attempt_config_path(run_dir, status.attempt))
    new_config = replace(config, setup=setup, resume_from=str(ckpt) if ckpt else None)
    save_config(new_config, run_dir / CONFIG_FILE, overwrite=True)
    _event(run_dir, "replan", attempt=attempt, reason=reason, changes=changes,
           effective_batch=setup.effective_batch(), resume_from=str(ckpt) if ckpt else None)
    text = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items())
    print(f"tuneplan: {reason}; re-planned (attempt {attempt}): {text}; effective batch "
          f"{setup.effective_batch()} kept; resuming from {ckpt.name if ckpt else 'the start'}", flush=True)
    status.attempt = attempt
    status.error = None
    status.phase = "queued"
    write_status(run_dir, status)
    return True


def supervise(run_dir: Path) -> int:
    """Run the attempts of a run; alerts (`notify.url`) come from a watcher thread here, the
    process that outlives every worker, so it also reports a worker killed with SIGKILL."""
    from tuneplan.services.notify import start_watcher

    watcher = start_watcher(Path(run_dir))
    try:
        return _supervise(run_dir)
    finally:
        if watcher is not None:
            watcher.finish()


def _supervise(run_dir: Path) -> int:
    run_dir = Path(run_dir)
    worker: subprocess.Popen | None = None
    stopping = False

    def on_stop(signum, _frame):
        nonlocal stopping
        stopping = True
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    env = {**os.environ, **QUIET_ENV, SUPERVISOR_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    while True:
        status = read_status(run_dir) or Status(run_name=run_dir.name)
        status.pids = [os.getpid()]
        write_status(run_dir, status)
        if stopping:
            _finish(run_dir, status, "stopped", message="stopped before training started")
            return EXIT_OK
        try:  # several GPUs: `accelerate launch` starts one worker per GPU (training/distributed.py)
            cmd, extra = distributed.worker_command(run_dir, load_config(run_dir / CONFIG_FILE).setup)
        except Exception:  # a bad config: the plain worker reports it
            cmd, extra = [sys.executable, "-m", "tuneplan.training.runner", str(run_dir), "--worker"], {}
        worker = subprocess.Popen(cmd, env={**env, **extra}, stdin=subprocess.DEVNULL)
        status.pids = [os.getpid(), worker.pid]
        write_status(run_dir, status)
        rc = worker.wait()
        status = read_status(run_dir) or Status(run_name=run_dir.name)
        status.pids = [os.getpid()]
        # under accelerate launch a rank's OOM exit becomes the launcher's exit 1: the rank's
        # status error says it
        oom = rc == EXIT_OOM or (rc != 0 and (status.error or "").startswith("out of memory"))
        if oom and not stopping:
            if replan(run_dir, status):
                continue
            return EXIT_FAILED
        if status.phase not in FINAL_PHASES:
            how = f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            _finish(run_dir, status, "stopped" if stopping and rc == 0 else "crashed",
                    error=None if stopping and rc == 0 else f"training process {how} without a final status")
        return EXIT_OK if status.phase in ("done", "stopped") else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneplan.training.runner")
    parser.add_argument("run_dir")
    parser.add_argument("--worker", action="store_true", help="run one training attempt in this process")
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(Path(args.run_dir)).exit_code
    return supervise(Path(args.run_dir))


if __name__ == "__main__":
    sys.exit(main())
