"""The preset file format: its types, reading and validating a preset's TOML (one line naming
file, line and key), and writing one (never with a Hub token in it)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

from planner.gpus import UnknownGPU, get_gpu
from planner.setup import TrainSetup
from tuneplan.config import (
    ConfigError, DataConfig, ModelConfig, RecoveryConfig, RunConfig, TrainingConfig,
    section_from_table, where_in,
)
from tuneplan.errors import UserError
from tuneplan.knobs import REFITTED, RUN_KNOBS
from tuneplan.services.gpu import CPU_KEY as CPU

FORMAT_VERSION = 1

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "HF_API_TOKEN")

TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
"""What a Hugging Face access token looks like (`hf_` + 34 letters and digits today)."""

_METHOD = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}

SETUP_KEYS = RUN_KNOBS
"""`[setup]` keys a preset may hold: the knobs tuneplan's training path implements
(`tuneplan.knobs`)."""


class PresetError(UserError):
    """A preset file the user must fix; the message names the file, the line and the key."""


# -- the format ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PresetConstraints:
    """What a re-fit keeps (table `[constraints]`)."""

    effective_batch: int | None = None
    """Sequences per optimizer step kept on any hardware (None: micro_batch x grad_accum)."""
    min_seq_len: int | None = None
    """Shortest sequence length acceptable when the saved one does not fit (None: never shorten)."""
    gpu: str | None = None
    """Catalog name of the GPU the preset was made for (`rtx-4090`, `a100-80gb`), or `cpu`."""
    vram: str | None = None
    """Memory the preset was made for, when it was not a whole catalog card (`16GiB`)."""
    allow_method_change: bool = True
    """Whether a LoRA preset may become QLoRA on a card where LoRA cannot fit (it is said)."""
    keep: tuple[str, ...] = ()
    """Re-fitted knobs to keep as saved anyway (e.g. ["optimizer"])."""


@dataclass(frozen=True)
class PresetEvidence:
    """What a finished run measured (table `[evidence]`, written by `presets save --from` or
    `tuneplan probe --save-evidence`)."""

    run: str | None = None
    """The run's name."""
    recorded: str | None = None
    """UTC date the preset was saved (YYYY-MM-DD)."""
    outcome: str | None = None
    """The run's final phase (`done`, `stopped`)."""
    steps: int | None = None
    """Optimizer steps completed."""
    final_loss: float | None = None
    gpu_name: str | None = None
    """As NVML reports it, or `cpu`."""
    gpu_memory_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    peft_version: str | None = None
    trl_version: str | None = None
    bitsandbytes_version: str | None = None
    peak_memory_bytes: int | None = None
    """Measured `torch.cuda.max_memory_allocated()` (None on CPU)."""
    peak_reserved_bytes: int | None = None
    """Measured `torch.cuda.max_memory_reserved()` (None on CPU)."""
    predicted_device_bytes: int | None = None
    """The planner's prediction for the run, for comparison."""
    tokens_per_second: float | None = None
    """Median of the run's logged training throughput."""
    environment_source: str | None = None
    """`run` (recorded by the training process), `saved` (probed when the preset was saved) or
    `probe` (measured by `tuneplan probe --save-evidence`; then `peak_memory_bytes` on the CPU is
    the live tensor bytes of the step)."""


@dataclass(frozen=True)
class Preset:
    """One preset file, read and validated."""

    name: str
    description: str
    config: RunConfig
    """The partial run configuration (empty `data.source` when the preset names no dataset)."""
    constraints: PresetConstraints
    evidence: PresetEvidence | None = None
    setup_keys: frozenset[str] = frozenset()
    """Knobs the file's `[setup]` table gives (the others took their defaults)."""
    path: Path | None = None
    origin: str = "file"
    """`project`, `user`, `shipped` or `file` (a path given directly)."""
    header: str = ""
    """The file's leading comment block (what it is for, how to use it)."""

    def effective_batch(self) -> int:
        return self.constraints.effective_batch or self.config.setup.effective_batch()


_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "setup": TrainSetup, "training": TrainingConfig,
    "recovery": RecoveryConfig, "constraints": PresetConstraints, "evidence": PresetEvidence,
}

_TOP = {"format_version": "int", "name": "str", "description": "str"}

_REQUIRED = (("format_version", None), ("name", None), ("model", "source"), ("setup", "method"))

_NOT_IN_PRESETS = {
    "prediction": "the planner's prediction is made again for the hardware at hand",
    "debug": "fault injection belongs to tests, not to presets",
    "notify": "alerts are set per run (--notify) or in the user config (docs/tracking-and-alerts.md)",
    "resume_from": "a preset starts a new run",
    "version": "presets use format_version (a run configuration file has version and no format_version)",
}


def _where(path: str, text: str, section: str | None, key: str | None) -> str:
    return where_in(path, text, section, key)


def _section(cls: type, table: Any, section: str, path: str, text: str) -> tuple[Any, set[str]]:
    """One `[section]` table through the typed loader (`tuneplan.config.section_from_table`);
    `[setup]` holds only the knobs of tuneplan's training path."""
    known = SETUP_KEYS if cls is TrainSetup else None
    try:
        obj: Any = section_from_table(cls, table, section, lambda key: _where(path, text, section, key), known=known)
    except ConfigError as exc:
        raise PresetError(str(exc)) from None
    return obj, set(table)


def preset_from_toml(text: str, path: str = "<preset>", *, origin: str = "file") -> Preset:
    """Parse and validate a preset's TOML text. Raises `PresetError` (one line: file:line)."""
    from tuneplan.config import tomllib, validate_setup
    from tuneplan.config import ConfigError

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays recursively: 2 KB of '[' is enough
        raise PresetError(f"{path}: nested too deeply to be a preset") from None
    if "version" in data and "format_version" not in data:
        return _preset_from_run_config_dict(data, text, path, origin)
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise PresetError(f"{_where(path, text, None, 'format_version')}: format_version {version} is newer than "
                          f"this tuneplan reads ({FORMAT_VERSION}); upgrade tuneplan to use this preset")
    for key, value in data.items():
        if key in _NOT_IN_PRESETS:
            where = _where(path, text, key, None) if isinstance(value, dict) else _where(path, text, None, key)
            raise PresetError(f"{where}: {key} is not part of a preset: {_NOT_IN_PRESETS[key]}")
        if key in _TOP:
            want = {"int": int, "str": str}[_TOP[key]]
            if not isinstance(value, want) or isinstance(value, bool):
                words = "a whole number" if want is int else "a string"
                raise PresetError(f"{_where(path, text, None, key)}: {key} must be {words} (got {value!r})")
        elif key not in _SECTIONS:
            close = difflib.get_close_matches(key, [*_TOP, *_SECTIONS], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join([*_TOP, *_SECTIONS])}"
            where = _where(path, text, key, None) if isinstance(value, dict) else _where(path, text, None, key)
            raise PresetError(f"{where}: unknown key {key}; {hint}")
    for first, key in _REQUIRED:
        if key is None:
            present, what = first in data, first
        else:
            present, what = isinstance(data.get(first), dict) and key in data[first], f"{first}.{key}"
        if not present:
            raise PresetError(f"{path}: missing required field {what} (see docs/presets.md)")
    if data["format_version"] < 1:
        raise PresetError(f"{_where(path, text, None, 'format_version')}: format_version must be {FORMAT_VERSION} "
                          f"(got {data['format_version']})")
    name = data["name"]
    if not NAME_RE.fullmatch(name):
        raise PresetError(f"{_where(path, text, None, 'name')}: name {name!r} may use only letters, digits, "
                          "'.', '_' and '-' (up to 64)")
    parts: dict[str, Any] = {}
    setup_keys: set[str] = set()
    for section, cls in _SECTIONS.items():
        if section in data:
            parts[section], keys = _section(cls, data[section], section, path, text)
            if section == "setup":
                setup_keys = keys
    config = RunConfig(model=parts.get("model", ModelConfig()), data=parts.get("data", DataConfig()),
                       setup=parts.get("setup", TrainSetup()), training=parts.get("training", TrainingConfig()),
                       recovery=parts.get("recovery", RecoveryConfig()))
    constraints = parts.get("constraints", PresetConstraints())
    # value checks: T's validation (names the field and the value), located in the file
    try:
        validate_setup(config.setup)
        placeholder = replace(config, model=replace(config.model, source=config.model.source or "x"),
                              data=replace(config.data, source=config.data.source or "x"))
        placeholder.validate()
        _check_constraints(constraints, config)
    except ConfigError as exc:
        m = re.match(r"^(\w+)\.(\w+) ", str(exc))
        where = _where(path, text, m.group(1), m.group(2)) if m else path
        raise PresetError(f"{where}: {exc}") from None
    header = "\n".join(line for line in _header_lines(text))
    return Preset(name=name, description=data.get("description", ""), config=config, constraints=constraints,
                  evidence=parts.get("evidence"), setup_keys=frozenset(setup_keys), path=Path(path) if path else None,
                  origin=origin, header=header)


def _preset_from_run_config_dict(data: dict[str, Any], text: str, path: str, origin: str) -> Preset:
    """A run configuration file (`version = 1`, as `tuneplan train` writes `config.toml` and
    the wizard's review screen saves presets) read as a preset: its knobs are the preset's,
    its effective batch and sequence length the constraints; its prediction is dropped."""
    from tuneplan.config import config_from_dict

    config = config_from_dict({k: v for k, v in data.items() if k not in ("prediction", "debug", "resume_from")},
                              where=path)
    stem = Path(path).stem if path else "preset"
    name = stem if NAME_RE.fullmatch(stem) else "preset"
    s = config.setup
    constraints = PresetConstraints(effective_batch=s.effective_batch(), min_seq_len=s.seq_len)
    clean = RunConfig(model=config.model, data=config.data, setup=s, training=config.training,
                      recovery=config.recovery)
    return Preset(name=name, description=f"run configuration ({_METHOD.get(s.method, s.method)} of "
                  f"{Path(config.model.source).name})", config=clean, constraints=constraints,
                  setup_keys=frozenset(data.get("setup") or {}), path=Path(path) if path else None, origin=origin,
                  header="\n".join(_header_lines(text)))


def _check_constraints(c: PresetConstraints, config: RunConfig) -> None:
    from tuneplan.config import ConfigError

    if c.effective_batch is not None and c.effective_batch <= 0:
        raise ConfigError(f"constraints.effective_batch must be > 0 (got {c.effective_batch})")
    if c.min_seq_len is not None and c.min_seq_len <= 0:
        raise ConfigError(f"constraints.min_seq_len must be > 0 (got {c.min_seq_len})")
    if c.min_seq_len is not None and c.min_seq_len > config.setup.seq_len:
        raise ConfigError(f"constraints.min_seq_len must be <= setup.seq_len {config.setup.seq_len} "
                          f"(got {c.min_seq_len})")
    if c.gpu is not None and c.gpu != CPU:
        try:
            get_gpu(c.gpu)
        except UnknownGPU as exc:
            hint = f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""
            raise ConfigError(f"constraints.gpu must be a catalog GPU or cpu (got {c.gpu!r}){hint}") from None
    if c.vram is not None:
        from tuneplan.services.planning import parse_size

        try:
            parse_size(c.vram, "constraints.vram")
        except UserError as exc:
            raise ConfigError(str(exc)) from None
    bad = [k for k in c.keep if k not in REFITTED]
    if bad:
        raise ConfigError(f"constraints.keep may list only {', '.join(REFITTED)} (got {bad[0]!r})")


def _header_lines(text: str) -> Iterable[str]:
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        yield line


def load_preset_file(path: Path, origin: str = "file") -> Preset:
    """Read and validate one preset file."""
    path = Path(path)
    from tuneplan.files import CONFIG_MAX_BYTES, read_text_bounded

    try:
        text = read_text_bounded(path, CONFIG_MAX_BYTES)  # a FIFO or /dev/zero is refused, never read
    except FileNotFoundError:
        raise PresetError(f"{path}: no such preset file") from None
    except UnicodeDecodeError:
        raise PresetError(f"{path}: cannot read it (not UTF-8 text)") from None
    except OSError as exc:
        raise PresetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return preset_from_toml(text, str(path), origin=origin)


def fields_of(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


# -- saving --------------------------------------------------------------------------------------
def _tokens() -> list[str]:
    return [v for v in (os.environ.get(k) for k in TOKEN_ENV) if v and len(v) >= 8]


def check_no_secret(text: str, what: str) -> None:
    """Refuse text holding the Hub token of the environment or anything shaped like one."""
    if any(t in text for t in _tokens()) or TOKEN_RE.search(text):
        raise UserError(f"{what} would contain a Hugging Face token; presets never hold tokens: remove it and retry")


def _toml_dict(preset_name: str, description: str, config: RunConfig, constraints: PresetConstraints,
               evidence: PresetEvidence | None) -> dict[str, Any]:
    def table(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        out = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if v is None or v == () or f.name in skip:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    data: dict[str, Any] = {"format_version": FORMAT_VERSION, "name": preset_name, "description": description}
    data["model"] = table(config.model)
    data["data"] = table(config.data)
    data["setup"] = {k: v for k, v in table(config.setup).items() if k in SETUP_KEYS}
    data["training"] = table(config.training)
    data["recovery"] = table(config.recovery)
    data["constraints"] = table(constraints)
    if evidence is not None:
        data["evidence"] = table(evidence)
    return data


def dump_preset(name: str, description: str, config: RunConfig, constraints: PresetConstraints,
                evidence: PresetEvidence | None = None, *, header: str | None = None) -> str:
    """The TOML text of a preset (with a header comment saying how to use it)."""
    import tomli_w

    if header is None:
        header = (f"# {description or name}\n"
                  f"# Use it with:  tuneplan plan --preset {name}    (re-fits it to this machine's GPU)\n"
                  f"#               tuneplan train --preset {name} [--dataset FILE]\n"
                  "# Format: docs/presets.md. Saved by tuneplan; edit freely.\n")
    text = header + "\n" + tomli_w.dumps(_toml_dict(name, description, config, constraints, evidence))
    preset_from_toml(text, f"<preset {name}>")  # what we write must read back
    return text
