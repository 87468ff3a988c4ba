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

One run, one trainer: the supervisor holds the run lock (`tuneplan/run_process.py`), handed
down by the launcher, and passes it to its worker; each process records itself in
`status.json` (pid, start time, command line) once it can take a SIGTERM. Disk faults: the
worker names the error it hit (ENOSPC, EROFS, EFBIG) in `status.json`; when it cannot (its
writes fail, it dies), it says so through a pipe to the supervisor, which records it (on a
full disk by overwriting `status.json` in place, `events.write_status`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tuneplan import run_process
from tuneplan.config import RunConfig, load_config, save_config
from tuneplan.training import distributed
from tuneplan.errors import UserError
from tuneplan.events import (
    ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, FINAL_PHASES, LOG_FILE, MODEL_DIR, STOP_REQUEST_FILE, Status,
    append_event, last_checkpoint, make_event, read_status, write_status,
)

EXIT_OK = 0
EXIT_FAILED = 3
EXIT_OOM = 75
"""Worker exit code: out of memory (the supervisor re-plans)."""
SUPERVISOR_PID_ENV = "TUNEPLAN_SUPERVISOR_PID"
ERROR_FD_ENV = "TUNEPLAN_ERROR_FD"
"""The write end of a pipe from the supervisor: the worker's last word when it cannot write files."""
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
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # train.log on a full or read-only disk
            pass
        status.log_tail = log_tail(run_dir)
    if not distributed.is_main_process():  # several ranks: rank 0 owns status.json
        return
    try:
        _event(run_dir, "phase", phase=phase, **({"message": message or error} if (message or error) else {}))
    except OSError:
        pass  # the status is what matters; the supervisor hears the error through its pipe
    write_status(run_dir, status)


def _tell_supervisor(error: str, step: int) -> None:
    """The worker's error and last completed step, sent down the supervisor's pipe (needs no disk)."""
    raw = os.environ.get(ERROR_FD_ENV)
    if not raw or not distributed.is_main_process():
        return
    try:
        os.write(int(raw), (json.dumps({"error": error, "step": step}) + "\n").encode("utf-8"))
    except (OSError, ValueError):
        pass


def _finish_failed(run_dir: Path, status: Status, error: str) -> None:
    """Record a failure, first through the pipe (in case the disk refuses the status write)."""
    _tell_supervisor(error, status.step)
    try:
        _finish(run_dir, status, "failed", error=error)
    except OSError:
        pass


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:  # train.log cannot take it (full or read-only disk)
        pass


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
    control = RunControl()
    if install_signals:
        signal.signal(signal.SIGTERM, lambda *_: control.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: control.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sup = os.environ.get(SUPERVISOR_PID_ENV)
    status.pids = ([int(sup)] if sup else []) + [os.getpid()]
    mine = run_process.process_record(os.getpid(), armed=install_signals)
    # keep the supervisor's record (it wrote it), add this worker's own
    status.processes = [r for r in status.processes if isinstance(r, dict) and sup and r.get("pid") == int(sup)]
    status.processes += [mine] if mine else []
    status.started_at = status.started_at or time.time()
    status.error = None
    status.log_tail = []
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
        _event(run_dir, "environment", **environment_facts())  # the evidence `presets save` records
        if (run_dir / STOP_REQUEST_FILE).exists():
            control.request_stop("tuneplan stop")
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
        finished = _finished_checkpoint(resume, trainer)
        if finished is not None:  # killed during its final save: save again, train nothing
            trainer._load_from_checkpoint(resume)
            status.step, status.max_steps = finished, finished
            _event(run_dir, "message", level="info",
                   text=f"{Path(resume).name} is the end of training ({finished} steps): only the final save is redone")
        else:
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
        save_final(trainer, tokenizer, out, config, status, notes)
        _event(run_dir, "message", level="info", text=f"saved {out.name}/ ({config.setup.method})")
        loss = f"final loss {status.loss:.4f}" if status.loss is not None else "finished"
        _finish(run_dir, status, "done", message=f"{loss} after {status.step} steps")
        return WorkerResult(EXIT_OK, trainer, tokenizer)
    except torch.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        # evaluation has its own micro-batch: running out of memory there says so, and the
        # supervisor lowers that one, never the training micro-batch
        where = (f"while evaluating at step {status.step}" if status.phase == "evaluating"
                 else f"at step {status.step + 1}")
        # any rank may run out of memory: it says so itself (the supervisor re-plans on it)
        append_event(run_dir, make_event("message", level="error", text=f"out of memory {where}: "
                                         f"{first}", **({"rank": distributed.rank()} if distributed.world_size() > 1 else {})))
        status.error = f"out of memory {where}"
        write_status(run_dir, status)
        return WorkerResult(EXIT_OOM, trainer, tokenizer)
    except UserError as exc:
        _say(f"tuneplan: error: {exc}")
        _finish_failed(run_dir, status, str(exc))
        return WorkerResult(EXIT_FAILED, trainer, tokenizer)
    except Exception as exc:  # a bug or a library failure: full traceback in train.log
        from tuneplan.training.checkpoints import CheckpointWriteError, disk_fault, disk_fault_message

        try:
            traceback.print_exc()
        except OSError:
            pass
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = {"loading": "while loading the model", "tokenizing": "while preparing the data",
                 "training": f"at step {status.step + 1}", "evaluating": "while evaluating",
                 "saving": "while saving"}.get(status.phase, f"in phase {status.phase}")
        if isinstance(exc, CheckpointWriteError):
            where = str(exc).split(":", 1)[0]
        fault = disk_fault(exc)
        if fault is not None:
            error = disk_fault_message(*fault, where, run_dir)
        else:
            error = f"{where}: {type(exc).__name__}: {first} (see train.log)"
        _finish_failed(run_dir, status, error)
        return WorkerResult(EXIT_FAILED, trainer, tokenizer)


def _finished_checkpoint(resume: str | None, trainer) -> int | None:
    """The step count when `resume` is the checkpoint of a finished training (its step reached
    the run's total: only the final save was left), else None."""
    if not resume:
        return None
    try:
        state = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))
        step, total = int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if total > 0 and step >= total else None


def save_final(trainer, tokenizer, out: Path, config: RunConfig, status: Status, notes: list[str]) -> None:
    """The final adapter (or model), its tokenizer and card, written into a partial folder and
    published in one rename: a kill during the final save never leaves a half `adapter/`."""
    import shutil

    from tuneplan.training.checkpoints import check_final_space, partial_dir, publish

    partial = partial_dir(out)
    if distributed.is_main_process():
        params = trainer.model.parameters()
        n = sum(p.numel() for p in params if p.requires_grad or config.setup.method == "full")
        check_final_space(out.parent, n, config.setup.method)
        shutil.rmtree(partial, ignore_errors=True)
    distributed.save_final_model(trainer, partial)
    if distributed.is_main_process():
        tokenizer.save_pretrained(partial)
        write_model_card(partial, config, status, notes)
        if config.debug.save_sleep_seconds:
            time.sleep(config.debug.save_sleep_seconds)
        publish(partial, out)


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

    from tuneplan.training.recovery import replan_eval_after_oom, replan_after_oom

    config = load_config(run_dir / CONFIG_FILE)
    attempt = status.attempt + 1
    reason = status.error or "out of memory"
    if attempt > config.recovery.max_retries:
        _finish(run_dir, status, "failed",
                error=f"{reason}; gave up after {config.recovery.max_retries} re-plan(s) (recovery.max_retries)")
        return False
    if "while evaluating" in reason:  # the eval micro-batch only: training keeps its batch geometry
        eval_batch = config.training.eval_batch or config.setup.micro_batch
        nxt_eval = replan_eval_after_oom(eval_batch)
        if nxt_eval is None:
            _finish(run_dir, status, "failed", error=f"{reason}; nothing smaller to try: eval batch 1 "
                                                     f"(set data.eval_fraction = 0 to train without an eval loss)")
            return False
        setup, changes = config.setup, {"eval_batch": [eval_batch, nxt_eval]}
        training = replace(config.training, eval_batch=nxt_eval)
    else:
        nxt = replan_after_oom(config.setup, allow_qlora=config.recovery.allow_qlora)
        if nxt is None:
            hint = "" if config.recovery.allow_qlora or config.setup.method != "lora" else \
                " (set recovery.allow_qlora = true to let it switch to QLoRA)"
            _finish(run_dir, status, "failed",
                    error=f"{reason}; nothing smaller to try: micro-batch 1 with checkpointing{hint}")
            return False
        setup, changes = nxt
        training = config.training
    ckpt = last_checkpoint(run_dir)
    save_config(config, _attempt_config_path(run_dir, status.attempt))
    new_config = replace(config, setup=setup, training=training, resume_from=str(ckpt) if ckpt else None)
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


def _hold_lock(run_dir: Path) -> int | None:
    """The run lock for this supervisor: the one the launcher handed down, or taken here (a
    supervisor started by hand); None when another trainer holds it."""
    fd = run_process.inherited_lock_fd(run_dir)
    if fd is None:
        try:
            return run_process.acquire_lock(run_dir)
        except run_process.RunLocked:
            return None
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: this only confirms it
    except BlockingIOError:
        return None
    return fd


def _worker_error(read_fd: int) -> dict | None:
    """The last word the worker sent down the pipe, `{"error", "step"}` (None if it sent nothing)."""
    chunks = []
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    for line in reversed(b"".join(chunks).decode("utf-8", "replace").splitlines()):
        try:
            said = json.loads(line)
            return {"error": str(said["error"]), "step": said.get("step")}
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _why_it_died(run_dir: Path, rc: int, sent: dict | None) -> str:
    """The error of a worker that ended without a final status: what it sent down the pipe,
    else a disk fault the supervisor can see (read-only or full disk), else how it ended."""
    from tuneplan.services.runs import folder_fault

    if sent:
        return sent["error"]
    fault = folder_fault(run_dir)
    how = f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
    if fault:
        return f"training process {how}: {fault}"
    return f"training process {how} without a final status"


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
    lock_fd = _hold_lock(run_dir)
    if lock_fd is None:
        _say(f"tuneplan: run {run_dir.name} is already being trained by another process "
             f"(it holds {run_dir / run_process.LOCK_FILE}); this one exits")
        return EXIT_FAILED
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
    from tuneplan.training.checkpoints import clean_partials

    for leftover in clean_partials(run_dir):
        _say(f"tuneplan: removed {leftover.name}, left by a save that did not finish")
    me = run_process.process_record(os.getpid(), armed=True)
    env = {**os.environ, **QUIET_ENV, SUPERVISOR_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    env.pop(run_process.LOCK_FD_ENV, None)
    while True:
        status = read_status(run_dir) or Status(run_name=run_dir.name)
        status.pids, status.processes = [os.getpid()], [me] if me else []
        write_status(run_dir, status)
        if stopping or (run_dir / STOP_REQUEST_FILE).exists():
            _finish(run_dir, status, "stopped", message="stopped before training started")
            return EXIT_OK
        try:  # several GPUs: `accelerate launch` starts one worker per GPU (training/distributed.py)
            cmd, extra = distributed.worker_command(run_dir, load_config(run_dir / CONFIG_FILE).setup)
        except Exception:  # a bad config: the plain worker reports it
            cmd, extra = [sys.executable, "-m", "tuneplan.training.runner", str(run_dir), "--worker"], {}
        read_fd, write_fd = os.pipe()
        worker = subprocess.Popen(cmd, env={**env, **extra, ERROR_FD_ENV: str(write_fd)}, stdin=subprocess.DEVNULL,
                                  pass_fds=(lock_fd, write_fd))
        os.close(write_fd)
        record = run_process.process_record(worker.pid)
        status.pids = [os.getpid(), worker.pid]
        status.processes = [r for r in (me, record) if r]
        try:
            write_status(run_dir, status)
        except OSError:
            pass
        rc = worker.wait()
        sent = _worker_error(read_fd)
        os.close(read_fd)
        status = read_status(run_dir) or Status(run_name=run_dir.name)
        status.pids, status.processes = [os.getpid()], [me] if me else []
        # under accelerate launch a rank's OOM exit becomes the launcher's exit 1: the rank's
        # status error says it
        oom = rc == EXIT_OOM or (rc != 0 and (status.error or "").startswith("out of memory"))
        if oom and not stopping:
            if replan(run_dir, status):
                continue
            return EXIT_FAILED
        if status.phase not in FINAL_PHASES:
            # a stop that reached the worker before its handler: nothing lost, it stopped
            stopped = stopping and rc in (0, -signal.SIGTERM)
            error = None if stopped else _why_it_died(run_dir, rc, sent)
            if sent and isinstance(sent.get("step"), int) and sent["step"] > status.step:
                status.step = sent["step"]  # the worker got further than its last status write
            if error is not None:
                _say(f"tuneplan: {error}")
            try:
                _finish(run_dir, status, "stopped" if stopped else ("failed" if sent else "crashed"), error=error,
                        message="stopped before training started" if stopped and rc else None)
            except OSError:
                pass  # a read-only run folder: `tuneplan runs` finds the reason itself (runs.folder_fault)
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
