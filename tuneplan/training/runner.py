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
from typing import TYPE_CHECKING, Any

from tuneplan import run_process
from tuneplan.config import RunConfig, load_config, save_config
from tuneplan.training import distributed
from tuneplan.errors import UserError
from tuneplan.events import (
    ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, FINAL_PHASES, LOG_FILE, MODEL_DIR, STOP_REQUEST_FILE, DataEvent,
    EnvironmentEvent, Event, Failure, MessageEvent, PhaseEvent, ReplanEvent, Status, append_event, last_checkpoint,
    read_status, write_status,
)
from tuneplan.training.oom import first_line, oom_as_out_of_memory_error

if TYPE_CHECKING:  # the supervisor imports this module and never loads torch or transformers
    from transformers import Trainer, TrainerCallback

    from tuneplan.training.callbacks import RunControl

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


def _event(run_dir: Path, event: Event) -> None:
    if not distributed.is_main_process():  # several ranks: rank 0 writes the run's events
        return
    append_event(run_dir, event)


def _finish(run_dir: Path, status: Status, phase: str, *, error: str | None = None,
            failure: Failure | None = None, message: str | None = None) -> None:
    status.phase = phase
    if error is not None:
        status.error = error
        status.failure = failure or status.failure
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # train.log on a full or read-only disk
            pass
        status.log_tail = log_tail(run_dir)
    if not distributed.is_main_process():  # several ranks: rank 0 owns status.json
        return
    try:
        _event(run_dir, PhaseEvent(phase=phase, message=message or error))
    except OSError:
        pass  # the status is what matters; the supervisor hears the error through its pipe
    write_status(run_dir, status)


def _tell_supervisor(failure: Failure, error: str, step: int) -> None:
    """The worker's failure, its words and the last completed step, sent down the supervisor's
    pipe (needs no disk)."""
    raw = os.environ.get(ERROR_FD_ENV)
    if not raw or not distributed.is_main_process():
        return
    try:
        said = {"failure": failure.value, "error": error, "step": step}
        os.write(int(raw), (json.dumps(said) + "\n").encode("utf-8"))
    except (OSError, ValueError):
        pass


def _finish_failed(run_dir: Path, status: Status, failure: Failure, error: str) -> None:
    """Record a failure, first through the pipe (in case the disk refuses the status write)."""
    _tell_supervisor(failure, error, status.step)
    try:
        _finish(run_dir, status, "failed", error=error, failure=failure)
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


def write_model_card(directory: Path, run_dir: Path, config: RunConfig, status: Status, notes: list[str],
                     *, final_dir: Path) -> None:
    """The final folder's README.md: the same card `tuneplan push` uploads (`services/model_card.py`),
    naming local paths in full and loading from `final_dir` (where the folder is published)."""
    from tuneplan.services.model_card import model_card

    card = model_card(run_dir, config, load_from=str(final_dir), public=False, steps=status.step,
                      final_loss=status.loss, notes=notes)
    (directory / "README.md").write_text(card, encoding="utf-8")


def _install_signals(control: RunControl) -> None:
    """SIGTERM/SIGINT: checkpoint at the end of the current step, then stop; SIGHUP ignored."""
    signal.signal(signal.SIGTERM, lambda *_: control.request_stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: control.request_stop("SIGINT"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _attempt_status(run_dir: Path, *, armed: bool) -> Status:
    """The status this attempt starts from: this process recorded beside its supervisor, the
    previous attempt's failure cleared."""
    status = read_status(run_dir) or Status()
    status.run_name = status.run_name or run_dir.name
    sup = os.environ.get(SUPERVISOR_PID_ENV)
    status.pids = ([int(sup)] if sup else []) + [os.getpid()]
    mine = run_process.process_record(os.getpid(), armed=armed)
    # keep the supervisor's record (it wrote it), add this worker's own
    status.processes = [r for r in status.processes if isinstance(r, dict) and sup and r.get("pid") == int(sup)]
    status.processes += [mine] if mine else []
    status.started_at = status.started_at or time.time()
    status.clear_failure()
    status.log_tail = []
    return status


class _Attempt:
    """One training attempt of a run in this process, step by step: load the model, prepare the
    data, build the trainer, train, save. `run()` returns the result of an attempt that ended
    (done, or stopped); the failure handlers record the others with their `Failure`."""

    def __init__(self, run_dir: Path, status: Status, control: RunControl) -> None:
        self.run_dir = run_dir
        self.status = status
        self.control = control
        self.trainer: Trainer | None = None
        self.tokenizer: Any = None
        """The model's tokenizer (a transformers tokenizer; its class depends on the model)."""
        self.notes: list[str] = []

    def result(self, exit_code: int) -> WorkerResult:
        return WorkerResult(exit_code, self.trainer, self.tokenizer)

    def _stopped_before_training(self) -> bool:
        if (self.run_dir / STOP_REQUEST_FILE).exists():
            self.control.request_stop("tuneplan stop")
        if self.control.stop_requested:
            _finish(self.run_dir, self.status, "stopped", message=f"{self.control.stop_signal} before training started")
        return self.control.stop_requested

    def run(self) -> WorkerResult:
        from tuneplan.training.callbacks import RunEventsCallback

        config = load_config(self.run_dir / CONFIG_FILE)
        self.status.effective_batch = config.effective_batch()
        callback = RunEventsCallback(self.run_dir, config, self.status, self.control)
        callback.phase("loading", f"model {config.model.source} ({config.setup.method})")
        _setup_logging()
        model = self.load_model(config)
        if self._stopped_before_training():
            return self.result(EXIT_OK)
        callback.phase("tokenizing", f"dataset {config.data.source}")
        data = self.prepare_data(config)
        trainer = self.build_trainer(config, model, data, callback)
        if self._stopped_before_training():
            return self.result(EXIT_OK)
        if not self.train(config, trainer):
            return self.result(EXIT_OK)  # stopped, with a checkpoint
        callback.phase("saving")
        self.save(config, trainer)
        loss = f"final loss {self.status.loss:.4f}" if self.status.loss is not None else "finished"
        _finish(self.run_dir, self.status, "done", message=f"{loss} after {self.status.step} steps")
        return self.result(EXIT_OK)

    def load_model(self, config: RunConfig):
        from tuneplan.training.modeling import load_for_training

        model, self.tokenizer, self.notes = load_for_training(
            config.model.source, config.setup, trust_remote_code=config.model.trust_remote_code,
            device=distributed.load_device())
        # the evidence `presets save` records
        _event(self.run_dir, EnvironmentEvent.of(environment_facts()))
        return model

    def prepare_data(self, config: RunConfig):
        from tuneplan.training.data import prepare_data

        data = prepare_data(config, self.tokenizer, self.notes)
        for note in self.notes:
            _event(self.run_dir, MessageEvent(level="info", text=note))
        _event(self.run_dir, DataEvent(
            examples=data.examples, dropped_too_long=data.dropped_too_long, truncated=data.truncated,
            format=data.format, multi_turn=data.multi_turn, every_assistant_turn=data.every_turn,
            train_examples=len(data.train), eval_examples=len(data.eval) if data.eval is not None else 0))
        return data

    def build_trainer(self, config: RunConfig, model: Any, data: Any, callback: TrainerCallback) -> Trainer:
        from tuneplan.training import tracking
        from tuneplan.training.sft import build_trainer

        tracking.prepare_environment(self.run_dir, config)
        trainer = self.trainer = build_trainer(config, model, self.tokenizer, data.train, data.eval, [callback],
                                               output_dir=str(self.run_dir / CHECKPOINTS_DIR))
        if config.training.report_to != "none":
            trainer.add_callback(tracking.PlanToTrackerCallback(trainer, config))
        return trainer

    def train(self, config: RunConfig, trainer: Trainer) -> bool:
        """Train (or resume); False when a stop ended it before the last step (checkpoint saved)."""
        status = self.status
        resume = config.resume_from if config.resume_from and Path(config.resume_from).is_dir() else None
        if resume:
            _event(self.run_dir, MessageEvent(level="info", text=f"resuming from {resume}"))
        finished = _finished_checkpoint(resume, trainer) if resume else None
        if resume and finished is not None:  # killed during its final save: save again, train nothing
            trainer._load_from_checkpoint(resume)
            status.step, status.max_steps = finished, finished
            _event(self.run_dir, MessageEvent(
                level="info", text=f"{Path(resume).name} is the end of training ({finished} steps): "
                                   "only the final save is redone"))
            return True
        with oom_as_out_of_memory_error():
            trainer.train(resume_from_checkpoint=resume)
        if self.control.stop_requested and trainer.state.global_step < trainer.state.max_steps:
            _finish(self.run_dir, status, "stopped",
                    message=f"{self.control.stop_signal}: checkpoint saved at step {status.step}")
            return False
        return True

    def save(self, config: RunConfig, trainer: Trainer) -> None:
        out = self.run_dir / (MODEL_DIR if config.setup.method == "full" else ADAPTER_DIR)
        save_final(trainer, self.tokenizer, out, config, self.status, self.notes)
        _event(self.run_dir, MessageEvent(level="info", text=f"saved {out.name}/ ({config.setup.method})"))

    # -- how an attempt fails -------------------------------------------------------------------
    def out_of_memory(self, exc: BaseException) -> WorkerResult:
        """Recorded for the supervisor, which re-plans; any rank may run out of memory and says so."""
        status = self.status
        # evaluation has its own micro-batch: running out of memory there says so, and the
        # supervisor lowers that one, never the training micro-batch
        if status.phase == "evaluating":
            failure, where = Failure.OUT_OF_MEMORY_EVAL, f"while evaluating at step {status.step}"
        else:
            failure, where = Failure.OUT_OF_MEMORY, f"at step {status.step + 1}"
        rank = distributed.rank() if distributed.world_size() > 1 else None
        append_event(self.run_dir, MessageEvent(level="error", text=f"out of memory {where}: {first_line(exc)}",
                                                rank=rank))
        status.fail(failure, f"out of memory {where}")
        write_status(self.run_dir, status)
        return self.result(EXIT_OOM)

    def bad_input(self, exc: UserError) -> WorkerResult:
        from tuneplan.errors import NonFiniteTraining
        from tuneplan.training.checkpoints import DiskSpaceError

        _say(f"tuneplan: error: {exc}")
        failure = (Failure.NON_FINITE if isinstance(exc, NonFiniteTraining) else
                   Failure.DISK if isinstance(exc, DiskSpaceError) else Failure.BAD_INPUT)
        _finish_failed(self.run_dir, self.status, failure, str(exc))
        return self.result(EXIT_FAILED)

    def crashed(self, exc: Exception) -> WorkerResult:
        """A bug or a library failure: the full traceback goes to train.log, one line to the status."""
        from tuneplan.training.checkpoints import CheckpointWriteError, disk_fault, disk_fault_message

        try:
            traceback.print_exc()
        except OSError:
            pass
        status = self.status
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = {"loading": "while loading the model", "tokenizing": "while preparing the data",
                 "training": f"at step {status.step + 1}", "evaluating": "while evaluating",
                 "saving": "while saving"}.get(status.phase, f"in phase {status.phase}")
        if isinstance(exc, CheckpointWriteError):
            where = str(exc).split(":", 1)[0]
        fault = disk_fault(exc)
        if fault is not None:
            _finish_failed(self.run_dir, status, Failure.DISK, disk_fault_message(*fault, where, self.run_dir))
        else:
            _finish_failed(self.run_dir, status, Failure.ERROR,
                           f"{where}: {type(exc).__name__}: {first} (see train.log)")
        return self.result(EXIT_FAILED)


def run_worker(run_dir: Path, *, install_signals: bool = True) -> WorkerResult:
    """Train one attempt of a run in this process; the status and events say how it ended."""
    import torch

    from tuneplan.training.callbacks import RunControl

    run_dir = Path(run_dir)
    control = RunControl()
    if install_signals:
        _install_signals(control)
    attempt = _Attempt(run_dir, _attempt_status(run_dir, armed=install_signals), control)
    try:
        return attempt.run()
    except torch.OutOfMemoryError as exc:
        return attempt.out_of_memory(exc)
    except UserError as exc:
        return attempt.bad_input(exc)
    except Exception as exc:
        return attempt.crashed(exc)


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
        write_model_card(partial, out.parent, config, status, notes, final_dir=out)
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
    if status.failure is Failure.OUT_OF_MEMORY_EVAL:  # the eval micro-batch only: training keeps its batch geometry
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
    _event(run_dir, ReplanEvent(attempt=attempt, reason=reason, changes=changes,
                                effective_batch=setup.effective_batch(), resume_from=str(ckpt) if ckpt else None))
    text = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items())
    print(f"tuneplan: {reason}; re-planned (attempt {attempt}): {text}; effective batch "
          f"{setup.effective_batch()} kept; resuming from {ckpt.name if ckpt else 'the start'}", flush=True)
    status.attempt = attempt
    status.clear_failure()
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
    """The last word the worker sent down the pipe, `{"failure", "error", "step"}` (None if it
    sent nothing); `failure` is a `Failure` (DIED when the worker did not name one)."""
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
            try:
                failure = Failure(said.get("failure"))
            except ValueError:
                failure = Failure.DIED
            return {"failure": failure, "error": str(said["error"]), "step": said.get("step")}
        except (ValueError, KeyError, TypeError, AttributeError):
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
        # status says it
        oom = rc == EXIT_OOM or (rc != 0 and status.failure is not None and status.failure.out_of_memory)
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
            failure = sent["failure"] if sent else Failure.DIED
            try:
                _finish(run_dir, status, "stopped" if stopped else ("failed" if sent else "crashed"), error=error,
                        failure=None if stopped else failure,
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
