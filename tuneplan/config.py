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
[notify]     alerts for unattended runs: url (webhook or ntfy topic), stall_minutes
[debug]      fault injection for tests (oom_at_step, poison_at_step)
```

Pure standard library plus `tomli_w` for writing. Validation names the field and the value:
`training.learning_rate must be > 0 (got 0)`.
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from planner.setup import TUNEPLAN_STACK, CalibrationProfile, TrainSetup
from tuneplan.errors import UserError, check_path
from tuneplan.files import CONFIG_MAX_BYTES, read_text_bounded
from tuneplan.knobs import validate_setup as _validate_knobs
from tuneplan.settings import MAX_COUNT  # noqa: F401  (re-exported: the largest count every layer takes)
from tuneplan.settings import CHOICE, COUNT, DURATION, NUMBER, SWITCH, URL, declared, setting
from tuneplan.settings import check as check_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_VERSION = 1
_T = TypeVar("_T")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
TRACKERS = {"none": None, "tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
"""`training.report_to` values -> the pip package the trainer's integration needs (the names are
transformers' `report_to` names, `transformers/integrations/integration_utils.py`)."""
OVERLONG = ("truncate", "drop")
MAX_SEED = 2**32 - 1
"""Seeds are in [0, 2**32 - 1]: `transformers.set_seed` also seeds numpy, whose
`np.random.seed` accepts exactly that range (numpy/random/_mt19937.pyx)."""
MAX_LEARNING_RATE = 10.0
"""Adam moves every weight by about the learning rate per step (Kingma & Ba 2015, section 2.1),
so fine-tuning rates are ~1e-5..1e-3 and anything above 1 diverges; above 10 is a typo."""
MAX_EPOCHS = 1e6
"""More passes than this is a typo; the step count it implies would overflow the scheduler."""


class ConfigError(UserError):
    """A configuration value the user must fix; the message names the field and the value."""


NOTIFY_SCHEMES = ("http", "https", "ntfy+http", "ntfy+https")


def notify_url_problem(url: str) -> str | None:
    """What is wrong with an alert URL (None: nothing), read with `urllib.parse.urlsplit` and
    checked part by part: the parser itself accepts an empty host, wraps no port but lets 0
    through, and keeps `user:pass@`, spaces and line breaks, which either break the request
    (CR/LF inject headers), go to another port, or send a password to the resolver."""
    from urllib.parse import urlsplit

    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain spaces, tabs or line breaks"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or outside 0-65535
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in NOTIFY_SCHEMES:
        return "must be an http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not hold a user name or password (user:pass@); put the token in the path, as webhooks do"
    host = parts.hostname or ""
    if not host:
        return "has no host name"
    if not all(c.isalnum() or c in ".-_:" for c in host):
        return f"has a host name that is not one ({host!r})"
    if port == 0:
        return "has port 0, which no server listens on (use 1-65535)"
    return None


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
    eval_fraction: float = setting(0.0, NUMBER, lo=0, hi=1, hi_open=True, flag="--eval-fraction", order=5,
                                   help="share of rows held out for the eval loss")
    """Share of the rows held out for the eval loss (0 for none)."""
    max_samples: int | None = setting(None, COUNT, flag="--max-samples", order=11, help="use only the first N rows")
    """Use only the first N rows (`None` for all)."""
    overlong: str = setting("truncate", CHOICE, choices=OVERLONG, flag="--overlong", order=12,
                            help="samples longer than --seq-len")
    """Samples longer than the sequence length: `truncate` them or `drop` them (counted in events)."""
    completion_only_loss: bool = True
    """Chat and prompt/completion data: loss on the completion tokens only."""


@dataclass(frozen=True)
class TrainingConfig:
    """The hyperparameters: each field is a setting (`tuneplan.settings`): its flag, rule and help."""

    learning_rate: float = setting(2e-4, NUMBER, lo=0, lo_open=True, at_most=MAX_LEARNING_RATE, flag="--lr",
                                   order=3, help="peak learning rate", review="learning rate", review_row=3,
                                   review_help="learning rate: peak, after warmup (cosine schedule)")
    """Peak learning rate."""
    lr_scheduler: str = setting("cosine", CHOICE, choices=SCHEDULERS)
    """`cosine`, `linear`, `constant` or `constant_with_warmup`."""
    warmup_ratio: float = setting(0.03, NUMBER, lo=0, hi=1, hi_open=True, flag="--warmup-ratio", order=4)
    """Share of the optimizer steps spent warming up the learning rate."""
    epochs: float = setting(1.0, NUMBER, lo=0, lo_open=True, at_most=MAX_EPOCHS, flag="--epochs", order=1,
                            review="epochs", review_row=1,
                            review_help="epochs: passes over the dataset (ignored when max steps is set)")
    """Passes over the training rows (ignored when `max_steps` is set)."""
    max_steps: int | None = setting(None, COUNT, flag="--max-steps", order=2, review="max steps", review_row=2,
                                    review_empty="(epochs)",
                                    review_help="max steps: optimizer steps to run (empty: run the epochs)")
    """Optimizer steps to run; `None` to run `epochs` passes."""
    weight_decay: float = setting(0.0, NUMBER, lo=0)
    max_grad_norm: float = setting(1.0, NUMBER, lo=0, flag="--max-grad-norm", order=4, help="gradient clipping norm (0: off)")
    """Gradient clipping norm (0 to disable)."""
    seed: int = setting(42, COUNT, lo=0, hi=MAX_SEED, flag="--seed", order=10)
    logging_steps: int = setting(1, COUNT, flag="--logging-steps", order=9)
    """Optimizer steps between `log` events."""
    eval_steps: int | None = setting(None, COUNT)
    """Optimizer steps between eval losses (`None`: at the end of each epoch)."""
    save_steps: int = setting(100, COUNT, flag="--save-steps", order=6, help="optimizer steps between checkpoints")
    """Optimizer steps between checkpoints."""
    save_every: str | None = setting(None, DURATION, flag="--save-every", metavar="DURATION", order=7,
                                     help="also checkpoint whenever this much time has passed, e.g. 30m, 1h "
                                          "(spot instances)")
    """Wall-clock time between checkpoints as well (`"30m"`, `"1h"`, `"90s"`; `tuneplan.durations`),
    for machines that can vanish (spot instances); `None`: steps only."""
    eval_batch: int | None = setting(None, COUNT)
    """Micro-batch of the eval loss (`None`: the training micro-batch); OOM recovery lowers
    this, never the training micro-batch, when evaluation runs out of memory."""
    save_total_limit: int = setting(2, COUNT, flag="--save-total-limit", order=8, help="checkpoints kept")
    """Checkpoints kept (the oldest are deleted)."""
    report_to: str = setting("none", CHOICE, choices=tuple(TRACKERS), flag="--report-to", order=15,
                             help="experiment tracker the trainer logs to (default none; "
                                  "docs/tracking-and-alerts.md)", review="tracking", review_row=5,
                             review_help="tracking: Left/Right picks the tracker the trainer logs to (its package "
                                         "must be installed)")
    """Experiment tracker the trainer logs to (its own `report_to`): one of `TRACKERS`."""


@dataclass(frozen=True)
class RecoveryConfig:
    max_retries: int = setting(3, COUNT, lo=0, flag="--max-retries", order=13,
                               help="out-of-memory re-plans allowed (default 3)")
    """Out-of-memory restarts allowed, each with a smaller configuration."""
    allow_qlora: bool = setting(False, SWITCH, flag="--allow-qlora", order=14,
                                help="let OOM recovery switch a LoRA run to QLoRA")
    """Whether OOM recovery may switch a LoRA run to QLoRA (changes the result's quality)."""


@dataclass(frozen=True)
class PredictionConfig:
    torch_peak_bytes: int | None = None
    """The planner's `max_memory_allocated` prediction for the second optimizer step, in bytes."""
    device_bytes: int | None = None
    """The planner's nvidia-smi-level prediction, in bytes."""


@dataclass(frozen=True)
class NotifyConfig:
    url: str | None = setting(None, URL, rule=notify_url_problem, flag="--notify", metavar="URL", group="alerts", order=16,
                              help="webhook (JSON POST) or ntfy topic URL for done, failed, crashed, stalled, NaN "
                                   "and re-plan alerts (default: the user config's; `off` for none)")
    """Where alerts go: a webhook (JSON POST) or an ntfy-style topic URL (plain text);
    `None` or empty: no alerts. `tuneplan/services/notify.py` sends them."""
    stall_minutes: float = setting(10.0, NUMBER, lo=0, lo_open=True, flag="--stall-minutes", metavar="M",
                                   group="alerts", order=17, help="alert when no step for this long (default 10)")
    """Alert when a training run makes no optimizer step for this long."""


@dataclass(frozen=True)
class DebugConfig:
    oom_at_step: int | None = setting(None, COUNT)
    """Fault injection: raise an out-of-memory error at this optimizer step (tests)."""
    oom_micro_batch_above: int | None = setting(None, COUNT, lo=0)
    """Fault injection: with `oom_at_step`, only while the micro-batch exceeds this
    (so a re-planned run with a smaller micro-batch gets past it)."""
    step_sleep_seconds: float = setting(0.0, NUMBER, lo=0, at_most=3600)
    """Slow every optimizer step down by this much (tests of stop/save/resume)."""
    poison_at_step: int | None = setting(None, COUNT)
    """Fault injection: fill the trainable weights with NaN after this optimizer step, so the
    next loss is not finite (tests of the non-finite stop)."""
    save_sleep_seconds: float = setting(0.0, NUMBER, lo=0, at_most=3600)
    """Pause every save between writing its files and publishing them (tests of a kill during
    a save)."""
    oom_eval_batch_above: int | None = setting(None, COUNT, lo=0)
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
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    """Alerts for unattended runs."""
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
        m, d = self.model, self.data
        _check(bool(m.source), "model.source", m.source, "must name a model (Hub id or local folder)")
        _check(bool(d.source), "data.source", d.source, "must name a dataset (file or Hub id)")
        for what, text in (("model.source", m.source), ("data.source", d.source), ("name (the run folder)", self.name)):
            if text is not None:
                check_path(text, what)
        from tuneplan.dataset_formats import FORMATS
        _check(d.format == "auto" or d.format in FORMATS, "data.format", d.format,
               f"must be auto or one of {', '.join(FORMATS)}")
        for section in SETTING_SECTIONS:  # every run setting's rule, as declared (`tuneplan.settings`)
            check_settings(getattr(self, section), SETTINGS_OF[section], ConfigError)
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
    """Raise `ConfigError` naming the first invalid knob of a `TrainSetup` (each knob's rule
    is in `tuneplan.knobs`)."""
    _validate_knobs(s, prefix, error=ConfigError)


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule} (got {_shown(value)})")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


SETTING_SECTIONS = ("data", "training", "recovery", "notify", "debug")
"""The config tables whose fields carry run settings (`tuneplan.settings`)."""
SETTINGS_OF = {"data": declared("data", DataConfig), "training": declared("training", TrainingConfig),
               "recovery": declared("recovery", RecoveryConfig), "notify": declared("notify", NotifyConfig),
               "debug": declared("debug", DebugConfig)}
SETTINGS = tuple(s for section in SETTING_SECTIONS for s in SETTINGS_OF[section])
"""Every run setting: its config key and rule, and `tuneplan train`'s flag where it has one."""


# --- TOML -------------------------------------------------------------------------------------

_SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "setup": TrainSetup, "training": TrainingConfig,
    "recovery": RecoveryConfig, "prediction": PredictionConfig, "notify": NotifyConfig, "debug": DebugConfig,
}
_TOP_LEVEL = ("name", "resume_from", "version")


def locate(text: str, section: str | None, key: str | None) -> int | None:
    """Line (1-based) of `key` in table `[section]` (or of the table header), by a line scan:
    enough for the flat files presets are (tables and `key = value` lines)."""
    current: str | None = None
    header_line = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[\s*([A-Za-z0-9_.\-\"']+)\s*\]", line)
        if m:
            current = m.group(1).strip("\"'")
            if current == section and header_line is None:
                header_line = n
            continue
        m = re.match(r"^([A-Za-z0-9_\-\"'.]+)\s*=", line)
        if not m:
            continue
        name = m.group(1).replace('"', "").replace("'", "")
        parts = name.split(".")
        sec, k = (current, name) if len(parts) == 1 else (parts[0] if current is None else current, parts[-1])
        if key is None and sec == section:
            return header_line or n
        if k == key and sec == section:
            return n
    return header_line


def where_in(path: str, text: str | None, section: str | None, key: str | None) -> str:
    """`path:line` of `key` in `[section]` of the file's `text` (just `path` when not found)."""
    line = locate(text, section, key) if text is not None else None
    return f"{path}:{line}" if line else path


_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
          tuple: "a list of strings", list: "a list of strings"}


def _expected(cls: type, key: str) -> str:
    """What a TOML value of field `key` of `cls` must be, in words (`a whole number or ...`)."""
    import typing

    hint = typing.get_type_hints(cls).get(key)
    words = [_WORDS.get(typing.get_origin(t) or t) for t in (typing.get_args(hint) if typing.get_origin(hint) in
                                                          (typing.Union, types.UnionType) else (hint,))]
    return " or ".join(w for w in words if w) or "a value"


def section_from_table(cls: type[_T], table: Any, section: str, where: Callable[[str | None], str], *,
                       known: Iterable[str] | None = None) -> _T:
    """One TOML table -> the frozen dataclass `cls`, typed by its annotations through msgspec
    (`msgspec.convert(strict=True)`: no string-to-number coercion, ints widen to floats, lists
    become tuples; missing keys take their defaults). One-line `ConfigError`s prefixed with
    `where(key)` (the file, and the line when the caller has the text): an unknown key with the
    closest known one, or the key, the type it must have and the value. `known`: the keys
    accepted (default: every field)."""
    import difflib

    import msgspec

    if not isinstance(table, dict):
        raise ConfigError(f"{where(None)}: [{section}] must be a table (got {table!r})")
    names = list(known) if known is not None else [f.name for f in fields(cls)]  # type: ignore[arg-type]  # a dataclass
    for key in table:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(names)}"
            raise ConfigError(f"{where(key)}: unknown key {section}.{key}; {hint}")
    try:
        return msgspec.convert(table, type=cls, strict=True)
    except msgspec.ValidationError as exc:
        m = re.search(r"at `\$\.(\w+)", str(exc))
        key = m.group(1) if m else None
        if key is None:
            raise ConfigError(f"{where(None)}: [{section}] {exc}") from None
        raise ConfigError(f"{where(key)}: {section}.{key} must be {_expected(cls, key)} "
                          f"(got {_shown(table.get(key))})") from None


def config_from_dict(data: dict[str, Any], *, where: str = "config", text: str | None = None) -> RunConfig:
    """A validated `RunConfig` from a TOML-shaped dict (missing keys take their defaults).
    `text`: the file's text, so errors name the line too."""
    import difflib

    def located(section: str) -> Callable[[str | None], str]:
        return lambda key: where_in(where, text, section, key)

    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "setup" and isinstance(value, dict):
            value = _without_retired_keys(value)
        if key in _SECTIONS:
            kwargs[key] = section_from_table(_SECTIONS[key], value, key, located(key))
        elif key in _TOP_LEVEL:
            kwargs[key] = value
        else:
            known = [*_SECTIONS, *_TOP_LEVEL]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
            raise ConfigError(f"{where_in(where, text, key, None) if isinstance(value, dict) else where}: "
                              f"unknown key {key}; {hint}")
    version = kwargs.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version must be {CONFIG_VERSION} (got {version!r}); this tuneplan reads version {CONFIG_VERSION}")
    return RunConfig(**kwargs).validate()


def _without_retired_keys(table: dict[str, Any]) -> dict[str, Any]:
    """A `[setup]` table without the keys earlier tuneplan versions wrote into every run
    configuration (`autocast = true`, `loss_upcast = true`): they are the memory model's
    calibration fields (`planner.setup.CalibrationProfile`), and at tuneplan's own values they
    say nothing, so old runs still resume. Any other value of one stays an unknown key."""
    ours = {f.name: getattr(TUNEPLAN_STACK, f.name) for f in fields(CalibrationProfile)}
    return {k: v for k, v in table.items()
            if not (k in ours and type(v) is type(ours[k]) and v == ours[k])}


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
            table[f.name] = _plain(value)
        out[section] = table
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; one-line errors for a missing or malformed file."""
    return read_toml_text(path)[0]


def read_toml_text(path: Path) -> tuple[dict[str, Any], str]:
    """A TOML file as a dict, and its text (for error lines); one-line errors for a missing or
    malformed file."""
    path = Path(check_path(path, "the configuration file name"))
    try:
        text = read_text_bounded(path, CONFIG_MAX_BYTES)  # a FIFO or /dev/zero is refused, never read
        return tomllib.loads(text), text
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (is it a TOML file?)") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def load_config(path: Path) -> RunConfig:
    """Read and validate a run configuration TOML file."""
    data, text = read_toml_text(path)
    return config_from_dict(data, where=str(path), text=text)


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
    # never through a symlink planted at the temporary name (O_NOFOLLOW); the rename replaces
    # a link at `path` itself, never its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dump_config(config))
    tmp.replace(path)


def with_setup(config: RunConfig, **changes: Any) -> RunConfig:
    """A copy with some `TrainSetup` knobs changed."""
    return replace(config, setup=replace(config.setup, **changes))


__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "TrainingConfig", "RecoveryConfig", "PredictionConfig",
    "NotifyConfig", "DebugConfig", "TRACKERS", "RunConfig", "SETTINGS", "SETTINGS_OF", "config_from_dict", "config_to_dict", "load_config", "save_config",
    "dump_config", "read_toml", "validate_setup", "with_setup",
]
