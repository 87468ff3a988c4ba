"""The `TrainerCallback` that writes a run's events and status, and obeys run control.

Every log step -> one `log` event (see `tuneplan/events.py`); eval -> `eval`; checkpoint ->
`checkpoint`; after the second optimizer step of the process -> `memory_probe` (measured peak
next to the planner's prediction; on the CPU the process's peak RSS). Control, checked once
per step: the stop flag (SIGTERM/SIGINT, or `stop.request`) -> checkpoint and stop;
`save.request` -> checkpoint now, keep going; `training.save_every` -> a checkpoint whenever
that much time has passed since the last one (on top of the step schedule). Fault injection
(`debug.oom_at_step`, `debug.oom_eval_batch_above`) raises an out-of-memory error, for the
recovery tests. A loss or gradient norm that is not finite ends the run as `failed`
(`NonFiniteTraining`); `debug.poison_at_step` fills the trainable weights with NaN to test
that (and the NaN alert).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from tuneplan.config import RunConfig
from tuneplan.errors import NON_FINITE_PREFIX, NonFiniteTraining
from tuneplan.events import (
    SAVE_REQUEST_FILE, STOP_REQUEST_FILE, CheckpointEvent, EvalEvent, Event, LogEvent, MemoryEvent, MemoryProbeEvent,
    MessageEvent, PhaseEvent, Status, append_event, compact, write_status,
)
from tuneplan.training import distributed


STATUS_INTERVAL_SECONDS = 1.0
"""Least time between two per-step rewrites of status.json (phases, checkpoints and the end
always rewrite it at once)."""


def memory_probe_fields(config: RunConfig, step: int, rank: int) -> dict:
    """The `memory_probe` event after the second optimizer step: the planner's prediction beside
    what this process measured. CUDA: torch's peaks and the process's nvidia-smi memory (NVML;
    None where NVML does not list it). CPU: the process's peak RSS (host memory, no GPU)."""
    from tuneplan.training.probe import peak_rss_bytes

    p = config.prediction
    fields: dict = dict(step=step, predicted_torch_peak_bytes=p.torch_peak_bytes,
                        predicted_device_bytes=p.device_bytes, rank=rank)
    if torch.cuda.is_available():
        from tuneplan.services.gpu import default_probe

        fields.update(device="cuda", torch_peak_bytes=torch.cuda.max_memory_allocated(),
                      torch_reserved_bytes=torch.cuda.max_memory_reserved(),
                      process_bytes=default_probe().process_memory())
    else:
        fields.update(device="cpu", rss_peak_bytes=peak_rss_bytes())
    return fields


class RunControl:
    """Flags set from signal handlers, read by the callback."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.stop_signal: str | None = None

    def request_stop(self, signame: str) -> None:
        self.stop_requested = True
        self.stop_signal = signame


class RunEventsCallback(TrainerCallback):
    def __init__(self, run_dir: Path, config: RunConfig, status: Status, control: RunControl):
        self.run_dir = Path(run_dir)
        self.config = config
        self.status = status
        self.control_flags = control
        self.evaluating = False
        self.start_time = time.time()
        self.first_step: int | None = None
        self.last_log_time: float | None = None
        self.last_log_tokens: float | None = None
        self.last_log_step: int | None = None
        self.probed = False
        self._status_written = float("-inf")
        self.save_every = config.save_every_seconds()
        """Seconds between time-based checkpoints (None: steps only)."""
        self.last_save_time = time.monotonic()
        self.main = distributed.is_main_process()
        """Rank 0 (or one process): writes status.json and every event; other ranks only memory."""

    # -- helpers ------------------------------------------------------------------------------
    def event(self, event: Event) -> None:
        if not self.main and not isinstance(event, (MemoryEvent, MemoryProbeEvent)):
            return
        append_event(self.run_dir, event)

    def _write_status(self, *, throttle: bool = False) -> None:
        """Rewrite status.json (rank 0). `throttle`: per-step updates at most every
        STATUS_INTERVAL_SECONDS; the events carry every step, and a status rewrite (JSON, temp
        file, rename) was most of tuneplan's per-step overhead in bench/bench_training_overhead.py."""
        if not self.main:
            return
        now = time.monotonic()
        if throttle and now - self._status_written < STATUS_INTERVAL_SECONDS:
            return
        self._status_written = now
        write_status(self.run_dir, self.status)

    def phase(self, phase: str, message: str | None = None) -> None:
        self.status.phase = phase
        self.event(PhaseEvent(phase=phase, message=message or None))
        self._write_status()

    # -- trainer hooks --------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = time.time()
        self.first_step = state.global_step
        self.last_log_time, self.last_log_step = self.start_time, state.global_step
        self.status.step = state.global_step
        self.status.max_steps = state.max_steps
        resumed = f" (resumed at step {state.global_step})" if state.global_step else ""
        self.phase("training", f"{state.max_steps} optimizer steps, effective batch "
                               f"{self.config.effective_batch()}{resumed}")
        self.last_save_time = time.monotonic()
        warning = self.config.checkpoint_warning(state.max_steps)
        if warning and not state.global_step:
            self.event(MessageEvent(level="warning", text=warning))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.evaluating:
            self.evaluating = False
            self.phase("training")
        d = self.config.debug
        if d.oom_at_step is not None and state.global_step + 1 == d.oom_at_step and (
                d.oom_micro_batch_above is None or self.config.setup.micro_batch > d.oom_micro_batch_above):
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by debug.oom_at_step={d.oom_at_step}, "
                f"micro_batch={self.config.setup.micro_batch})")

    def on_step_end(self, args, state, control, **kwargs):
        self.status.step = state.global_step
        if self.config.debug.poison_at_step == state.global_step and kwargs.get("model") is not None:
            with torch.no_grad():
                for p in kwargs["model"].parameters():
                    if p.requires_grad:
                        p.fill_(float("nan"))
        if self.config.debug.step_sleep_seconds:
            time.sleep(self.config.debug.step_sleep_seconds)
        request = self.run_dir / SAVE_REQUEST_FILE
        save_now = self.main and request.exists()
        if save_now:
            request.unlink(missing_ok=True)
        if self.main and not self.control_flags.stop_requested and (self.run_dir / STOP_REQUEST_FILE).exists():
            self.control_flags.request_stop("tuneplan stop")
        timed = (self.main and self.save_every is not None and not control.should_save
                 and time.monotonic() - self.last_save_time >= self.save_every)
        # several ranks: all must stop / checkpoint at the same step (collectives)
        stop, save_now, timed = distributed.sync_flags(self.control_flags.stop_requested, save_now, timed)
        if timed:
            control.should_save = True
            self.event(MessageEvent(level="info", text=f"time-based checkpoint (every "
                                                         f"{self.config.training.save_every}) at step {state.global_step}"))
        if stop and not self.control_flags.stop_requested:
            self.control_flags.request_stop("SIGTERM")
        if stop:
            control.should_save = True
            control.should_training_stop = True
        if save_now:
            control.should_save = True
            self.event(MessageEvent(level="info", text=f"checkpoint requested: saving at step {state.global_step}"))
        self._evaluation_ahead(control)
        if not self.probed and self.first_step is not None and state.global_step - self.first_step >= 2:
            self.probed = True
            self.event(MemoryProbeEvent(**memory_probe_fields(self.config, state.global_step, args.process_index)))

    def on_epoch_end(self, args, state, control, **kwargs):
        self._evaluation_ahead(control)

    def _evaluation_ahead(self, control) -> None:
        """The trainer evaluates right after this hook (transformers' `DefaultFlowCallback`, which
        runs before ours, has set `should_evaluate`): say so now, so that an out-of-memory error
        in the first eval batch is known to be evaluation's, not training's."""
        if control.should_evaluate and not self.evaluating:
            self.evaluating = True
            self.phase("evaluating")

    def on_prediction_step(self, args, state, control, **kwargs):
        if not self.evaluating:
            self.evaluating = True
            self.phase("evaluating")
        above = self.config.debug.oom_eval_batch_above
        if above is not None and args.per_device_eval_batch_size > above:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by debug.oom_eval_batch_above={above}, "
                f"eval batch {args.per_device_eval_batch_size})")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        now = time.time()
        if "eval_loss" in logs:
            self.event(EvalEvent(step=state.global_step, eval_loss=logs["eval_loss"]))
            return
        if "loss" not in logs:
            return
        step = state.global_step
        dt = now - (self.last_log_time or now)
        dsteps = step - (self.last_log_step or 0)
        tokens = logs.get("num_tokens")
        tok_s = None
        if tokens is not None and dt > 0:  # trl's counter starts at 0 in each process
            tok_s = (tokens - (self.last_log_tokens or 0)) / dt
        samples_s = dsteps * self.config.effective_batch() / dt if dt > 0 and dsteps > 0 else None
        elapsed = now - self.start_time
        done = step - (self.first_step or 0)
        eta = elapsed / done * (state.max_steps - step) if done > 0 else None
        fields = dict(step=step, max_steps=state.max_steps, epoch=logs.get("epoch", state.epoch),
                      loss=logs["loss"], learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                      tokens_per_second=tok_s, samples_per_second=samples_s,
                      elapsed_seconds=elapsed, eta_seconds=eta)
        if torch.cuda.is_available():
            fields.update(torch_allocated_peak_bytes=torch.cuda.max_memory_allocated(),
                          torch_reserved_peak_bytes=torch.cuda.max_memory_reserved(), rank=args.process_index)
        logged = compact(fields)  # status.json repeats the logged numbers, digit for digit
        self.event(LogEvent(**logged))
        bad = [f"{k} {fields[k]}" for k in ("loss", "grad_norm")
               if isinstance(fields[k], (int, float)) and not math.isfinite(fields[k])]
        if bad:  # NaN/inf weights never recover: stop before a checkpoint or the final save keeps them
            raise NonFiniteTraining(f"{NON_FINITE_PREFIX} {' and '.join(bad)} at step {step}: the weights are "
                                    "lost; lower the learning rate or resume from a checkpoint before it")
        if distributed.world_size() > 1:  # every rank: its own memory, one dashboard row per GPU
            self.event(MemoryEvent(step=step, **distributed.memory_fields()))
        self.last_log_time, self.last_log_step, self.last_log_tokens = now, step, tokens
        self.status.step, self.status.epoch = step, logged.get("epoch")
        if isinstance(logged.get("loss"), (int, float)) and math.isfinite(logged["loss"]):
            self.status.loss = logged["loss"]
        self._write_status(throttle=True)

    def on_save(self, args, state, control, **kwargs):
        self.last_save_time = time.monotonic()
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.status.last_checkpoint = str(path)
        self.event(CheckpointEvent(step=state.global_step, path=str(path)))
        self._write_status()
