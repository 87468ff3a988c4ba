"""Measure a planned configuration on this machine: a few optimizer steps of the real path.

`tuneplan probe` (and `bench/gpu_check.py` through it) builds the model with
`modeling.load_for_training` (or `random_weights.load_random_for_training`: same
`from_pretrained`, random tensors), the trainer with `sft.build_trainer`, and trains
`warmup + steps` optimizer steps on rows of exactly `seq_len` random tokens: the sequences the
planner predicts (`planner/memory.py`: packed rows, or the longest padded batch), the same
rows for real and random weights.

What it reads (`ProbeCallback`):
- torch peak allocated and reserved after the second optimizer step, as the planner defines
  `torch_peak_bytes` (`planner/setup.py` `MemoryEstimate`). On CUDA:
  `torch.cuda.max_memory_allocated()` / `max_memory_reserved()`. On the CPU there is no
  allocator counter: the live tensor bytes are counted by `memory_tracker.LiveTensorTracker`
  (what `max_memory_allocated` would read for the same ops, without the allocator's rounding).
- the process's memory as `nvidia-smi` shows it (NVML, `services.gpu.GpuProbe.process_memory`),
  the largest reading at any step end; NVML may not list this process (containers report host
  process ids): then the growth of the GPUs' used memory since before the model was loaded.
  On the CPU: the process's peak resident memory (RSS), which is not GPU memory.
- seconds per optimizer step (after the warm-up steps, CUDA synchronized) and tokens/s.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from planner.setup import TrainSetup
from tuneplan.training.oom import oom_as_out_of_memory_error


@dataclass
class Measurement:
    """What a probe measured. Bytes, seconds; None where this device cannot say."""

    device: str
    """`cuda` or `cpu`."""
    device_name: str
    torch_peak_bytes: int | None = None
    """After the second optimizer step: `max_memory_allocated` (CUDA) or live tensor bytes (CPU)."""
    torch_reserved_bytes: int | None = None
    """After the second optimizer step: `max_memory_reserved` (CUDA only)."""
    process_bytes: int | None = None
    """CUDA: the process's memory as nvidia-smi shows it (largest reading). CPU: peak RSS."""
    process_source: str | None = None
    """`nvml-process`, `nvml-device-delta` or `cpu-rss`."""
    step_seconds: float | None = None
    """Mean wall time of the measured optimizer steps (after warm-up)."""
    tokens_per_second: float | None = None
    tokens_per_step: int = 0
    steps: int = 0
    """Measured optimizer steps (warm-up not counted)."""
    warmup_steps: int = 0
    peak_step: int = 2
    """The optimizer step after which the peaks were read."""
    step_times: list[float] = field(default_factory=list)
    load_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def peak_rss_bytes() -> int:
    """The process's peak resident memory (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class ProbeCallback(TrainerCallback):
    """Times each optimizer step and reads the memory figures; stops after warm-up + steps."""

    def __init__(self, measurement: Measurement, *, total_steps: int, tracker=None, nvml=None,
                 nvml_baseline: int | None = None):
        self.m = measurement
        self.total = total_steps
        self.tracker = tracker
        self.nvml = nvml
        self.nvml_baseline = nvml_baseline
        self.cuda = measurement.device == "cuda"
        self.first: int | None = None
        self.t0 = 0.0
        self.times: list[float] = []

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        self.first = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self.t0)
        done = state.global_step - (self.first or 0)
        self._read_process()
        if done == min(self.m.peak_step, self.total):
            self.m.peak_step = done
            if self.cuda:
                self.m.torch_peak_bytes = int(torch.cuda.max_memory_allocated())
                self.m.torch_reserved_bytes = int(torch.cuda.max_memory_reserved())
            elif self.tracker is not None:
                self.m.torch_peak_bytes = int(self.tracker.peak)
        if done >= self.total:
            control.should_training_stop = True

    def _read_process(self) -> None:
        if not self.cuda:
            self.m.process_bytes, self.m.process_source = peak_rss_bytes(), "cpu-rss"
            return
        if self.nvml is None:
            return
        used = self.nvml.process_memory(os.getpid())
        source = "nvml-process"
        if used is None and self.nvml_baseline is not None:
            now = self.nvml.used_memory()
            used = None if now is None else max(0, now - self.nvml_baseline)
            source = "nvml-device-delta"
        if used is not None and used >= (self.m.process_bytes or 0):
            self.m.process_bytes, self.m.process_source = used, source


def _quiet() -> None:
    """No progress bars or advisory warnings: the probe's output is its report."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices of the libraries
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def probe_dataset(vocab_size: int, setup: TrainSetup, optimizer_steps: int, seed: int = 0):
    """Rows of exactly `seq_len` random token ids, enough for `optimizer_steps` steps."""
    from tuneplan.training.memory_tracker import token_dataset

    return token_dataset(vocab_size, setup, optimizer_steps, seed)


def _probe_run_config(setup: TrainSetup, optimizer_steps: int):
    from tuneplan.training.memory_tracker import run_config_for

    return run_config_for(setup, optimizer_steps)


def measure(source: str | None, setup: TrainSetup, *, config_dict: dict | None = None, random_weights: bool = False,
            steps: int = 3, warmup_steps: int = 1, trust_remote_code: bool = False, seed: int = 0,
            log=None) -> Measurement:
    """Train `warmup_steps + steps` optimizer steps of `setup` and measure them.

    `source`: what `load_for_training` loads (folder, Hub id); with `random_weights` the model is
    built from `config_dict` (its `config.json`) instead and nothing is read or downloaded.
    `log`: a callable taking one line of progress (None: silent)."""
    from tuneplan.training.sft import build_trainer
    from tuneplan.training.memory_tracker import LiveTensorTracker, classify_model, phase_hooks, simple_tokenizer

    say = log or (lambda _line: None)
    _quiet()
    total = warmup_steps + steps
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else "CPU"
    m = Measurement(device=device, device_name=name, steps=steps, warmup_steps=warmup_steps,
                    tokens_per_step=setup.micro_batch * setup.grad_accum * setup.seq_len)
    nvml = baseline = None
    if cuda:
        from tuneplan.services.gpu import default_probe

        nvml = default_probe()
        baseline = nvml.used_memory()  # before this process holds anything on the GPU
    t = time.perf_counter()
    if random_weights:
        from tuneplan.training.random_weights import load_random_for_training

        say("building the model with random weights from config.json (no download)")
        model, notes = load_random_for_training(config_dict, setup, seed=seed)
        tokenizer = simple_tokenizer(model.get_input_embeddings().weight.shape[0])
    elif source is not None:
        from tuneplan.training.modeling import load_for_training

        say(f"loading {source}")
        model, tokenizer, notes = load_for_training(source, setup, trust_remote_code=trust_remote_code)
    else:
        raise ValueError("measure() needs a source, or random_weights with the model's config_dict")
    m.load_seconds = time.perf_counter() - t
    m.notes.extend(notes)
    vocab = model.get_input_embeddings().weight.shape[0]
    tracker = None if cuda else LiveTensorTracker()
    callback = ProbeCallback(m, total_steps=total, tracker=tracker, nvml=nvml, nvml_baseline=baseline)
    trainer = build_trainer(_probe_run_config(setup, total), model, tokenizer, probe_dataset(vocab, setup, total, seed),
                            callbacks=[callback])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the report is the output, not the trainer's log dicts
    if tracker is not None:
        classify_model(tracker, trainer.model)  # after trl's casts, like the memory trace
    say(f"training {warmup_steps} warm-up + {steps} measured optimizer steps "
        f"(micro-batch {setup.micro_batch} x {setup.grad_accum}, {setup.seq_len} tokens)")
    with oom_as_out_of_memory_error():
        if tracker is not None:  # the memory trace's accounting: gradients and optimizer states too
            with phase_hooks(tracker, trainer, trainer.model), tracker:
                trainer.train()
        else:
            trainer.train()
    m.step_times = [round(x, 4) for x in callback.times]
    measured = callback.times[warmup_steps:] or callback.times[-1:]
    if measured:
        m.step_seconds = sum(measured) / len(measured)
        m.tokens_per_second = m.tokens_per_step / m.step_seconds if m.step_seconds > 0 else None
    if tracker is not None:
        m.notes.append("CPU: torch peak = live tensor bytes counted op by op; process memory = peak RSS "
                       "(host memory, not GPU memory)")
    return m
