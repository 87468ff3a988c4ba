"""The run configuration: frozen dataclasses, TOML load/save, validation.

A run configuration holds everything the training process needs; the launcher writes the
resolved one into the run directory as `config.toml` and the child reads it back. Sections:

```toml
[model]      source = "path/or/hub-id"
[data]       source = "data.jsonl", eval_fraction = 0.05, ...
[setup]      every knob of `planner.setup.TrainSetup` (method, lora_rank, micro_batch, ...)
[training]   hyperparameters: learning_rate, epochs or max_steps, warmup, save_steps, seed, ...
[recovery]   OOM recovery: max_retries, allow_qlora
[prediction] the planner's memory prediction (bytes), compared with the measured peak
[debug]      fault injection for tests (oom_at_step)
```

Pure standard library plus `tomli_w` for writing. Validation names the field and the value:
`training.learning_rate must be > 0 (got 0)`.
"""

from __future__ import annotations

import math

import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from planner.setup import ATTENTIONS, DTYPES, METHODS, OPTIMIZERS, STRATEGIES, TrainSetup
from tuneplan.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_VERSION = 1
RUN_KNOBS = ("method", "quant_type", "double_quant", "compute_dtype", "lora_rank", "lora_alpha", "lora_dropout",
             "lora_targets", "micro_batch", "grad_accum", "seq_len", "packing", "grad_checkpointing", "optimizer",
             "attn", "fused_ce", "num_gpus", "strategy", "cpu_offload")
"""The `TrainSetup` knobs tuneplan's training path implements. Its other fields describe other
training stacks for the planner's calibration; a run config leaves them out (their defaults
are our path) and the trainer refuses non-default values."""
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
OVERLONG = ("truncate", "drop")


class ConfigError(UserError):
    """A configuration value the user must fix; the message names the field and the value."""


@dataclass(frozen=True)
class ModelConfig:
    source: str = ""
    """Catalog name, Hub id (`org/name`) or local folder holding `config.json` and weights."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); `None` for the default branch."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless the user asks."""


@dataclass(frozen=True)
class DataConfig:
    source: str = ""
    """Local JSONL/JSON/CSV/Parquet file, or a Hub dataset id."""
    split: str = "train"
    """Split of a Hub dataset (local files have one split)."""
    format: str = "auto"
    """`auto` (detect from the columns) or one of `dataset_formats.FORMATS`."""
    eval_fraction: float = 0.0
    """Share of the rows held out for the eval loss (0 for none)."""
    max_samples: int | None = None
    """Use only the first N rows (`None` for all)."""
    overlong: str = "truncate"
    """Samples longer than the sequence length: `truncate` them or `drop` them (counted in events)."""
    completion_only_loss: bool = True
    """Chat and prompt/completion data: loss on the completion tokens only."""


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """`cosine`, `linear`, `constant` or `constant_with_warmup`."""
    warmup_ratio: float = 0.03
    """Share of the optimizer steps spent warming up the learning rate."""
    epochs: float = 1.0
    """Passes over the training rows (ignored when `max_steps` is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; `None` to run `epochs` passes."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 to disable)."""
    seed: int = 42
    logging_steps: int = 1
    """Optimizer steps between `log` events."""
    eval_steps: int | None = None
    """Optimizer steps between eval losses (`None`: at the end of each epoch)."""
    save_steps: int = 100
    """Optimizer steps between checkpoints."""
    save_every: str | None = None
    """Wall-clock time between checkpoints as well (`"30m"`, `"1h"`, `"90s"`; `tuneplan.durations`),
    for machines that can vanish (spot instances); `None`: steps only."""
    eval_batch: int | None = None
    """Micro-batch of the eval loss (`None`: the training micro-batch); OOM recovery lowers
    this, never the training micro-batch, when evaluation runs out of memory."""
    save_total_limit: int = 2
    """Checkpoints kept (the oldest are deleted)."""


@dataclass(frozen=True)
class RecoveryConfig:
    max_retries: int = 3
    """Out-of-memory restarts allowed, each with a smaller configuration."""
    allow_qlora: bool = False
    """Whether OOM recovery may switch a LoRA run to QLoRA (changes the result's quality)."""


@dataclass(frozen=True)
class PredictionConfig:
    torch_peak_bytes: int | None = None
    """The planner's `max_memory_allocated` prediction for the second optimizer step, in bytes."""
    device_bytes: int | None = None
    """The planner's nvidia-smi-level prediction, in bytes."""


@dataclass(frozen=True)
class DebugConfig:
    oom_at_step: int | None = None
    """Fault injection: raise an out-of-memory error at this optimizer step (tests)."""
    oom_micro_batch_above: int | None = None
    """Fault injection: with `oom_at_step`, only while the micro-batch exceeds this
    (so a re-planned run with a smaller micro-batch gets past it)."""
    step_sleep_seconds: float = 0.0
    """Slow every optimizer step down by this much (tests of stop/save/resume)."""
    save_sleep_seconds: float = 0.0
    """Pause every save between writing its files and publishing them (tests of a kill during
    a save)."""
    oom_eval_batch_above: int | None = None
    """Fault injection: raise an out-of-memory error during evaluation while the eval
    micro-batch exceeds this."""


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """What to fine-tune."""
    data: DataConfig = field(default_factory=DataConfig)
    """What to train on."""
    setup: TrainSetup = field(default_factory=TrainSetup)
    """Every knob the planner decides (method, LoRA, batch, sequence length, ...)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Hyperparameters."""
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    """Out-of-memory recovery."""
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    """The planner's prediction, kept to compare with the measured memory."""
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Fault injection for tests."""
    name: str | None = None
    """Run name (the run directory's name); `None` to derive one."""
    resume_from: str | None = None
    """Checkpoint folder to resume from (set by `tuneplan resume` and OOM recovery)."""
    version: int = CONFIG_VERSION

    def validate(self) -> "RunConfig":
        """Raise `ConfigError` on the first invalid value; return self."""
        validate_setup(self.setup)
        m, d, t, r = self.model, self.data, self.training, self.recovery
        _check(bool(m.source), "model.source", m.source, "must name a model (Hub id or local folder)")
        _check(bool(d.source), "data.source", d.source, "must name a dataset (file or Hub id)")
        from tuneplan.services.dataset_formats import FORMATS
        _check(d.format == "auto" or d.format in FORMATS, "data.format", d.format,
               f"must be auto or one of {', '.join(FORMATS)}")
        _check(0 <= d.eval_fraction < 1, "data.eval_fraction", d.eval_fraction, "must be in [0, 1)")
        _check(d.max_samples is None or d.max_samples > 0, "data.max_samples", d.max_samples, "must be > 0")
        _check(d.overlong in OVERLONG, "data.overlong", d.overlong, f"must be one of {', '.join(OVERLONG)}")
        _check(t.learning_rate > 0, "training.learning_rate", t.learning_rate, "must be > 0")
        _check(t.lr_scheduler in SCHEDULERS, "training.lr_scheduler", t.lr_scheduler,
               f"must be one of {', '.join(SCHEDULERS)}")
        _check(0 <= t.warmup_ratio < 1, "training.warmup_ratio", t.warmup_ratio, "must be in [0, 1)")
        _check(t.epochs > 0, "training.epochs", t.epochs, "must be > 0")
        _check(t.max_steps is None or t.max_steps > 0, "training.max_steps", t.max_steps, "must be > 0")
        _check(t.weight_decay >= 0, "training.weight_decay", t.weight_decay, "must be >= 0")
        _check(t.max_grad_norm >= 0, "training.max_grad_norm", t.max_grad_norm, "must be >= 0")
        _check(t.logging_steps > 0, "training.logging_steps", t.logging_steps, "must be > 0")
        _check(t.eval_steps is None or t.eval_steps > 0, "training.eval_steps", t.eval_steps, "must be > 0")
        _check(t.save_steps > 0, "training.save_steps", t.save_steps, "must be > 0")
        _check(t.save_total_limit > 0, "training.save_total_limit", t.save_total_limit, "must be > 0")
        _check(t.eval_batch is None or (isinstance(t.eval_batch, int) and t.eval_batch > 0), "training.eval_batch",
               t.eval_batch, "must be a whole number > 0")
        if t.save_every is not None:
            from tuneplan.durations import parse_duration

            try:
                parse_duration(t.save_every)
            except ValueError as exc:
                raise ConfigError(f"training.save_every {exc}") from None
        g = self.debug
        for name in ("step_sleep_seconds", "save_sleep_seconds"):
            value = getattr(g, name)
            _check(math.isfinite(value) and value >= 0, f"debug.{name}", value, "must be a finite number >= 0")
        _check(r.max_retries >= 0, "recovery.max_retries", r.max_retries, "must be >= 0")
        return self

    def effective_batch(self) -> int:
        return self.setup.effective_batch()

    def save_every_seconds(self) -> float | None:
        """`training.save_every` in seconds (None: checkpoints by steps only)."""
        from tuneplan.durations import parse_duration

        return parse_duration(self.training.save_every) if self.training.save_every is not None else None

    def checkpoint_warning(self, max_steps: int | None) -> str | None:
        """A warning when the step schedule leaves no checkpoint before the end of a run of
        `max_steps` optimizer steps and no time-based one is asked for: a crash or a preempted
        machine would lose the whole run."""
        t = self.training
        if max_steps is None or t.save_every is not None or t.save_steps < max_steps:
            return None
        return (f"no checkpoint before the end: training.save_steps ({t.save_steps}) >= the run's {max_steps} steps, "
                f"so a crash or a preempted machine loses the whole run; lower --save-steps or add --save-every 30m")


def validate_setup(s: TrainSetup, prefix: str = "setup") -> None:
    """Raise `ConfigError` naming the first invalid knob of a `TrainSetup`."""
    _check(s.method in METHODS, f"{prefix}.method", s.method, f"must be one of {', '.join(METHODS)}")
    _check(s.quant_type in ("nf4", "fp4"), f"{prefix}.quant_type", s.quant_type, "must be nf4 or fp4")
    _check(s.compute_dtype in DTYPES, f"{prefix}.compute_dtype", s.compute_dtype, f"must be one of {', '.join(DTYPES)}")
    _check(s.optimizer in OPTIMIZERS, f"{prefix}.optimizer", s.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
    _check(s.attn in ATTENTIONS, f"{prefix}.attn", s.attn, f"must be one of {', '.join(ATTENTIONS)}")
    _check(s.strategy in STRATEGIES, f"{prefix}.strategy", s.strategy, f"must be one of {', '.join(STRATEGIES)}")
    _check(s.lora_rank > 0, f"{prefix}.lora_rank", s.lora_rank, "must be > 0")
    _check(s.lora_alpha > 0, f"{prefix}.lora_alpha", s.lora_alpha, "must be > 0")
    _check(0 <= s.lora_dropout < 1, f"{prefix}.lora_dropout", s.lora_dropout, "must be in [0, 1)")
    _check(isinstance(s.lora_targets, str) or len(s.lora_targets) > 0, f"{prefix}.lora_targets", s.lora_targets,
           "must be all-linear or a non-empty list of module names")
    _check(s.micro_batch > 0, f"{prefix}.micro_batch", s.micro_batch, "must be > 0")
    _check(s.grad_accum > 0, f"{prefix}.grad_accum", s.grad_accum, "must be > 0")
    _check(s.seq_len > 0, f"{prefix}.seq_len", s.seq_len, "must be > 0")
    _check(s.num_gpus > 0, f"{prefix}.num_gpus", s.num_gpus, "must be > 0")


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule} (got {value!r})")


# --- TOML -------------------------------------------------------------------------------------

_SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "setup": TrainSetup, "training": TrainingConfig,
    "recovery": RecoveryConfig, "prediction": PredictionConfig, "debug": DebugConfig,
}
_TOP_LEVEL = ("name", "resume_from", "version")


def _section_from_dict(cls: type, data: Any, section: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{section}] must be a table (got {data!r})")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {section}.{key}; known: {', '.join(known)}")
        default = known[key].default
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{section}.{key} must be true or false (got {value!r})")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{section}.{key} must be a number (got {value!r})")
            if isinstance(default, float):
                value = float(value)
            elif isinstance(value, float):
                raise ConfigError(f"{section}.{key} must be a whole number (got {value!r})")
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> RunConfig:
    """A validated `RunConfig` from a TOML-shaped dict (missing keys take their defaults)."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            kwargs[key] = _section_from_dict(_SECTIONS[key], value, key, where)
        elif key in _TOP_LEVEL:
            kwargs[key] = value
        else:
            raise ConfigError(f"{where}: unknown key {key}; known: {', '.join([*_SECTIONS, *_TOP_LEVEL])}")
    version = kwargs.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version must be {CONFIG_VERSION} (got {version!r}); this tuneplan reads version {CONFIG_VERSION}")
    return RunConfig(**kwargs).validate()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The TOML-shaped dict of a config (`None` values are left out: TOML has no null)."""
    out: dict[str, Any] = {}
    for key in _TOP_LEVEL:
        value = getattr(config, key)
        if value is not None:
            out[key] = value
    for section in _SECTIONS:
        obj = getattr(config, section)
        table = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            if section == "setup" and f.name not in RUN_KNOBS and value == f.default:
                continue  # calibration-only field at its default (= our path)
            table[f.name] = _plain(value)
        out[section] = table
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; one-line errors for a missing or malformed file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: Path) -> RunConfig:
    """Read and validate a run configuration TOML file."""
    return config_from_dict(read_toml(path), where=str(path))


def dump_config(config: RunConfig) -> str:
    import tomli_w

    header = "# tuneplan run configuration (resolved). Re-run with: tuneplan train --config <this file>\n"
    return header + tomli_w.dumps(config_to_dict(config))


def save_config(config: RunConfig, path: Path, *, overwrite: bool = False) -> None:
    """Write the config as TOML; refuses to replace an existing file unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pick another path")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_config(config), encoding="utf-8")
    tmp.replace(path)


def with_setup(config: RunConfig, **changes: Any) -> RunConfig:
    """A copy with some `TrainSetup` knobs changed."""
    return replace(config, setup=replace(config.setup, **changes))


__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "TrainingConfig", "RecoveryConfig", "PredictionConfig",
    "DebugConfig", "RunConfig", "config_from_dict", "config_to_dict", "load_config", "save_config",
    "dump_config", "read_toml", "validate_setup", "with_setup",
]
