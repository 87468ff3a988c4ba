"""Presets: a configuration that worked, saved as a TOML file, re-fitted to the hardware at hand.

A preset is a partial run configuration (`tuneplan.config`: model, data, setup knobs,
training hyperparameters, recovery) plus the constraints to keep when it is re-fitted
(effective batch, shortest acceptable sequence length, the GPU it was made for) and, when it
was saved from a finished run, the evidence of that run (GPU, driver and library versions,
measured peak memory, tokens/s). The format is documented in the README (`## Presets`).

    preset = find_preset("llama-3.1-8b-lora-24gb")       # search order below
    fit = refit(preset, vram_bytes=16 * GiB)             # re-plan with the real planner
    fit.config, fit.changes, fit.summary_lines()

Search order, first match wins: `./presets/` (project-local, the current directory), the
user folder (`$TUNEPLAN_PRESETS_DIR`, else platformdirs `user_config_dir("tuneplan")/presets`),
then the presets shipped inside the package (the `presets` data folder). A NAME that ends in
`.toml` or contains a `/` is a file path.

Files are read with `tomllib` only: nothing in them is executed or evaluated. A Hub token is
never written into a preset: saving refuses any text that holds one. No torch, no textual.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

from planner.gpus import UnknownGPU, get_gpu, match_nvml
from planner.gpus import format_gib as _gib
from planner.setup import TrainSetup
from tuneplan.config import (
    ConfigError, DataConfig, ModelConfig, PredictionConfig, RecoveryConfig, RunConfig, TrainingConfig,
    section_from_table, where_in,
)
from tuneplan.errors import UserError, check_path
from tuneplan.knobs import REFITTED, RUN_KNOBS, SHOWN
from tuneplan.services.gpu import CPU_KEY as CPU  # `constraints.gpu` of a preset made for the CPU
from tuneplan.services.gpu import cpu_hardware  # noqa: F401  (re-exported: callers use presets.cpu_hardware)

FORMAT_VERSION = 1
PRESETS_DIR_ENV = "TUNEPLAN_PRESETS_DIR"
"""Overrides the user presets folder (the wizard's review screen saves there too)."""
CACHE_DIR_ENV = "TUNEPLAN_CACHE_DIR"
"""Overrides the cache folder that holds the built tiny model."""
from tuneplan.data import TINY_MODEL  # noqa: E402  (the bundled tiny model's name)
"""`model.source` of the bundled tiny Llama-style model (built on first use, then cached)."""
SAMPLE_DATA = "tuneplan:sample-chat"
"""`data.source` of the bundled sample chat dataset."""
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "HF_API_TOKEN")
TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
"""What a Hugging Face access token looks like (`hf_` + 34 letters and digits today)."""

_METHOD = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}
SEQ_STEP = 128
SETUP_KEYS = RUN_KNOBS
"""`[setup]` keys a preset may hold: the knobs tuneplan's training path implements
(`tuneplan.knobs`). The other `TrainSetup` fields describe other training stacks (the planner's
calibration) and are refused."""


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
    "notify": "alerts are set per run (--notify) or in the user config (README `## Alerts`)",
    "resume_from": "a preset starts a new run",
    "version": "presets use format_version (a run configuration file has version and no format_version)",
}


def _where(path: str, text: str, section: str | None, key: str | None) -> str:
    return where_in(path, text, section, key)


def _section(cls: type, table: Any, section: str, path: str, text: str) -> tuple[Any, set[str]]:
    """One `[section]` table through the typed loader (`tuneplan.config.section_from_table`);
    `[setup]` holds only the knobs of tuneplan's training path."""
    known = None
    if cls is TrainSetup:
        if isinstance(table, dict):
            names = set(fields_of(TrainSetup))
            for key in table:
                if key in names and key not in SETUP_KEYS:
                    raise PresetError(f"{_where(path, text, section, key)}: setup.{key} describes another training "
                                      "stack (the planner's calibration), not tuneplan's: remove it from the preset")
        known = SETUP_KEYS
    try:
        obj = section_from_table(cls, table, section, lambda key: _where(path, text, section, key), known=known)
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
            raise PresetError(f"{path}: missing required field {what} (see the README's `## Presets`)")
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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError(f"{path}: no such preset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PresetError(f"{path}: cannot read it ({exc})") from None
    return preset_from_toml(text, str(path), origin=origin)


# -- where presets live --------------------------------------------------------------------------
def project_dir() -> Path:
    """Project-local presets: `./presets/` under the current directory."""
    return Path.cwd() / "presets"


def user_dir() -> Path:
    """User presets: `$TUNEPLAN_PRESETS_DIR`, else platformdirs' user config folder + `presets`."""
    env = os.environ.get(PRESETS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_config_path("tuneplan") / "presets"


def shipped_dir() -> Path:
    """The presets shipped with tuneplan: the `presets` data folder installed beside the
    `tuneplan` package (wheel or editable checkout), else wherever the `presets` namespace
    package is found."""
    beside = Path(__file__).resolve().parents[2] / "presets"
    if beside.is_dir():
        return beside
    import importlib.util

    spec = importlib.util.find_spec("presets")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if any(Path(location).glob("*.toml")):
            return Path(location)
    return beside


def search_path() -> list[tuple[str, Path]]:
    """(origin, folder) in search order; a folder that is the shipped one counts once, as shipped."""
    shipped = shipped_dir()
    out: list[tuple[str, Path]] = []
    for origin, folder in (("project", project_dir()), ("user", user_dir()), ("shipped", shipped)):
        if origin != "shipped" and _same(folder, shipped):
            continue
        if any(_same(folder, f) for _, f in out):
            continue
        out.append((origin, folder))
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


@dataclass(frozen=True)
class PresetEntry:
    """One file found on the search path (valid or not)."""

    name: str
    origin: str
    path: Path
    preset: Preset | None
    error: str | None = None
    shadowed_by: str | None = None
    """Origin of the preset with the same name that wins (None: this one wins)."""


def list_presets() -> list[PresetEntry]:
    """Every preset file on the search path, winners first within a name, sorted by name."""
    seen: dict[str, str] = {}
    out: list[PresetEntry] = []
    for origin, folder in search_path():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            name = path.stem
            try:
                preset, error = load_preset_file(path, origin), None
            except UserError as exc:
                preset, error = None, str(exc)
            out.append(PresetEntry(name, origin, path, preset, error, seen.get(name)))
            seen.setdefault(name, origin)
    order = {o: i for i, (o, _) in enumerate(search_path())}
    return sorted(out, key=lambda e: (e.name, order.get(e.origin, 9)))


def _is_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or os.sep in name


def find_preset(name: str) -> Preset:
    """The preset called `name` (first match on the search path) or at the path `name`."""
    name = (name or "").strip()
    if not name:
        raise UserError("no preset name given (see `tuneplan presets list`)")
    check_path(name, "the preset name")
    if _is_path(name):
        return load_preset_file(Path(name).expanduser(), "file")
    if not NAME_RE.fullmatch(name):
        raise UserError(f"preset name {name!r} may use only letters, digits, '.', '_' and '-'")
    for origin, folder in search_path():
        path = folder / f"{name}.toml"
        if path.is_file():
            preset = load_preset_file(path, origin)
            return preset
    names = sorted({e.name for e in list_presets()})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(f"no preset named {name!r}: {hint}see `tuneplan presets list`")


# -- bundled sources (tiny model, sample dataset) ------------------------------------------------
def cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("tuneplan")


def _tiny_key() -> str:
    import hashlib

    from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG

    h = hashlib.sha256(TINY_MODEL_CONFIG.read_bytes() + SAMPLE_CHAT.read_bytes()).hexdigest()
    return h[:12]


def tiny_model_dir(*, build: bool = True) -> Path:
    """The tiny model's folder (built on first use by `python -m tuneplan.training.tiny` in a
    child process, so this layer never imports torch; then reused).
    With `build=False` and nothing built yet: a folder holding only its `config.json`, which is
    all the planner reads."""
    root = cache_dir() / f"tiny-model-{_tiny_key()}"
    folder = root / "tiny-llama"  # the folder's name becomes the runs' names
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    if not build:
        from tuneplan.data import TINY_MODEL_CONFIG

        plan_only = root / "plan-only" / "tiny-llama"
        plan_only.mkdir(parents=True, exist_ok=True)
        if not (plan_only / "config.json").is_file():
            (plan_only / "config.json").write_text(TINY_MODEL_CONFIG.read_text(encoding="utf-8"), encoding="utf-8")
        return plan_only
    import shutil
    import subprocess
    import tempfile

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        out = subprocess.run([sys.executable, "-m", "tuneplan.training.tiny", str(tmp)], capture_output=True,
                             text=True, env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not build the bundled tiny model in {root}: {last}")
        try:
            tmp.rename(folder)
        except OSError:  # another process built it first
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_sources(config: RunConfig, *, build: bool = True) -> RunConfig:
    """Replace the bundled-source names (`tuneplan:tiny`, `tuneplan:sample-chat`) by paths."""
    from tuneplan.data import SAMPLE_CHAT

    if config.model.source == TINY_MODEL:
        config = replace(config, model=replace(config.model, source=str(tiny_model_dir(build=build))))
    elif config.model.source.startswith("tuneplan:"):
        raise UserError(f"model.source {config.model.source!r}: the bundled model is {TINY_MODEL}")
    if config.data.source == SAMPLE_DATA:
        config = replace(config, data=replace(config.data, source=str(SAMPLE_CHAT)))
    elif config.data.source.startswith("tuneplan:"):
        raise UserError(f"data.source {config.data.source!r}: the bundled dataset is {SAMPLE_DATA}")
    return config


def portable_sources(config: RunConfig) -> RunConfig:
    """The inverse of `resolve_sources`: the bundled tiny model's and sample dataset's paths on
    this machine become `tuneplan:tiny` / `tuneplan:sample-chat` again (a preset travels)."""
    from tuneplan.data import SAMPLE_CHAT

    model = Path(config.model.source)
    if model.name == "tiny-llama" and model.parent.name.startswith("tiny-model-"):
        config = replace(config, model=replace(config.model, source=TINY_MODEL))
    try:
        if config.data.source and Path(config.data.source).resolve() == SAMPLE_CHAT.resolve():
            config = replace(config, data=replace(config.data, source=SAMPLE_DATA))
    except OSError:
        pass
    return config


# -- hardware ------------------------------------------------------------------------------------
def target_hardware(preset: Preset) -> Any:
    """The hardware the preset was made for."""
    from planner.solver import Hardware
    from tuneplan.services.planning import parse_size, resolve_hardware, PlanRequest

    c = preset.constraints
    if c.gpu == CPU:
        return cpu_hardware()
    vram = parse_size(c.vram, "constraints.vram") if c.vram else None
    if c.gpu:
        gpu = get_gpu(c.gpu)
        if vram is not None and vram < gpu.memory_bytes:
            return Hardware(gpu=gpu, free_bytes=vram, source="vram")
        return Hardware(gpu=gpu, source="catalog")
    if vram is not None:
        return resolve_hardware(PlanRequest(vram_bytes=vram))[0]
    return None


def local_hardware(preset: Preset | None = None, *, gpu: str | None = None, vram_bytes: int | None = None,
                   gpu_index: int | None = None, probe: Any = None) -> tuple[Any, list[str]]:
    """The hardware to re-fit for, and notes saying where it came from.

    `gpu` / `vram_bytes` as in `tuneplan plan`; otherwise the GPUs NVML finds; with none: the
    CPU for a CPU preset, else the preset's own target GPU (said in the notes)."""
    from tuneplan.services.planning import PlanRequest, resolve_hardware

    if gpu or vram_bytes is not None:
        hw, notes, _ = resolve_hardware(PlanRequest(gpu=gpu, vram_bytes=vram_bytes))
        return hw, notes
    if probe is None:
        from tuneplan.services.gpu import default_probe

        probe = default_probe()
    if probe.probe():
        hw, notes, _ = resolve_hardware(PlanRequest(gpu_index=gpu_index), probe)
        return hw, notes
    status = probe.status()
    if preset is None or preset.constraints.gpu == CPU:
        hw = cpu_hardware()
        return hw, [f"No GPU found ({status}): planning for the CPU, {_gib(hw.usable_bytes())} of RAM available."]
    target = target_hardware(preset)
    if target is None:
        raise UserError(f"no GPU here ({status}) and preset {preset.name} names none: give --gpu NAME or --vram SIZE")
    return target, [f"No GPU found ({status}): planned for the preset's own target, {_card(target)}; "
                    "give --gpu NAME or --vram SIZE to re-fit it for another card."]


def _card(hw: Any) -> str:
    if hw is None:
        return "an unknown GPU"
    if hw.gpu.key == CPU:
        return "the CPU"
    usable = hw.usable_bytes()
    if hw.gpu.key == "custom":
        return f"a {_gib(usable)} GPU"
    if usable < hw.gpu.memory_bytes:
        return f"{hw.gpu.name} with {_gib(usable)} free"
    return f"{hw.gpu.name} ({_gib(hw.gpu.memory_bytes)})"


# -- re-fitting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Refit:
    """A preset re-planned for some hardware."""

    preset: Preset
    config: RunConfig
    """The re-fitted run configuration (bundled sources resolved, prediction filled)."""
    outcome: Any
    """The planning service's `PlanOutcome` of the chosen configuration."""
    fits: bool
    changes: tuple[tuple[str, Any, Any], ...]
    """(knob, saved value, new value) for every shown knob that changed."""
    reasons: tuple[str, ...]
    """Sentences: why each change (and what was kept)."""
    notes: tuple[str, ...] = ()
    """Where the hardware came from (NVML, CPU, the preset's target)."""

    def change_text(self) -> str:
        """`micro-batch 4 -> 2, accumulation 4 -> 8` (or `no change`)."""
        if not self.changes:
            return "no change"
        return ", ".join(f"{SHOWN[k]} {_show(k, a)} -> {_show(k, b)}" for k, a, b in self.changes)

    def summary_lines(self, *, skip_notes: Iterable[str] = ()) -> list[str]:
        """What `plan --preset` and `train --preset` print before the plan (`skip_notes`:
        notes printed elsewhere, e.g. by the plan table)."""
        p = self.preset
        target = target_hardware(p)
        here = self.outcome.hardware
        where = f" ({p.origin}: {p.path})" if p.path else ""
        lines = [f"Preset {p.name}{where}: {p.description}".rstrip(": ")]
        lines.append(f"  made for {_card(target)}; re-fitted for {_card(here)}")
        if self.fits:
            lines.append(f"  fits: {self.change_text()}")
        else:
            lines.append(f"  DOES NOT FIT on {_card(here)}, even with the changes a re-fit may make:")
        lines += [f"  - {r}" for r in self.reasons]
        skip = set(skip_notes)
        lines += [f"  note: {n}" for n in self.notes if n not in skip]
        return lines


def _show(knob: str, value: Any) -> str:
    if knob == "method":
        return _METHOD.get(value, str(value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _hardware_reason(target: Any, here: Any) -> str:
    if target is None:
        return f"re-planned for {_card(here)}"
    if here.gpu.key == CPU and target.gpu.key == CPU:
        return f"planned for this machine's RAM ({_gib(here.usable_bytes())} available)"
    if here.gpu.key == CPU or target.gpu.key == CPU:
        return f"{_card(here)} instead of {_card(target)}"
    a, b = here.usable_bytes(), target.usable_bytes()
    if abs(a - b) < 0.02 * b:
        if here.gpu.bf16 != target.gpu.bf16:
            return f"{_card(here)} instead of {_card(target)} (no bfloat16)" if not here.gpu.bf16 else \
                f"{_card(here)} instead of {_card(target)}"
        return f"same memory as {_card(target)}; the planner's choice for it"
    kind = "GPU" if here.gpu.key == "custom" else "card"
    return f"{_gib(a)} {kind} instead of {_gib(b)}" + (f" ({target.gpu.name})" if target.gpu.key != "custom" else "")


def _base_fixed(preset: Preset) -> dict[str, Any]:
    """Knobs the re-fit keeps: everything but REFITTED (unless listed in constraints.keep)."""
    s = preset.config.setup
    keep = set(preset.constraints.keep)
    fixed: dict[str, Any] = {}
    if s.method != "full":
        fixed.update(lora_rank=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                     lora_targets=s.lora_targets)
    if s.method == "qlora":
        fixed.update(quant_type=s.quant_type, double_quant=s.double_quant)
    fixed["packing"] = s.packing
    if s.cpu_offload:
        fixed["cpu_offload"] = True  # FSDP offload to host memory: the solver plans FSDP with it
    if s.compute_dtype == "float32" and "compute_dtype" in preset.setup_keys:
        fixed["compute_dtype"] = "float32"  # asked for on purpose (CPU presets)
    for knob in keep:
        fixed[knob] = getattr(s, knob)
    return fixed


def refit(preset: Preset, *, gpu: str | None = None, vram_bytes: int | None = None, gpu_index: int | None = None,
          hardware: Any = None, probe: Any = None, safety_margin: float | None = None,
          build_sources: bool = False) -> Refit:
    """Re-plan `preset` for the hardware at hand (see `local_hardware`) with the real planner.

    Kept: the method, the LoRA and quantization knobs, the sequence length, the effective
    batch. Re-fitted: micro-batch and accumulation (product = the effective batch),
    checkpointing, optimizer, attention, fused loss, precision. When nothing fits, in order:
    a shorter sequence (down to `constraints.min_seq_len`), then QLoRA instead of LoRA
    (`constraints.allow_method_change`), then QLoRA with a shorter sequence; each is said.
    """
    from planner.solver import DEFAULT_SAFETY_MARGIN
    from tuneplan.services.planning import PlanRequest, plan, resolve

    notes: list[str] = []
    if hardware is None:
        hardware, notes = local_hardware(preset, gpu=gpu, vram_bytes=vram_bytes, gpu_index=gpu_index, probe=probe)
    config = resolve_sources(preset.config, build=build_sources)
    s = preset.config.setup
    resolved = resolve(PlanRequest(model=config.model.source))
    margin = DEFAULT_SAFETY_MARGIN if safety_margin is None else safety_margin
    effective = preset.effective_batch()
    base = _base_fixed(preset)

    def attempt(method: str, seq: int, micro_batch: int | None = None):
        fixed = {**base, "seq_len": seq}
        if micro_batch is not None:
            fixed.update(micro_batch=micro_batch, grad_accum=effective // micro_batch)
        if method != "qlora":
            fixed.pop("quant_type", None)
            fixed.pop("double_quant", None)
        # the preset's GPU count is kept (one, unless it was made for several): never more GPUs
        return plan(PlanRequest(resolved=resolved, hardware=hardware, method=method, fixed=fixed,
                                effective_batch=effective, epochs=config.training.epochs, safety_margin=margin,
                                **_gpu_count(s)))

    reasons: list[str] = []
    first = outcome = attempt(s.method, s.seq_len)
    tried_methods = [s.method]
    if not outcome.result.fits:
        outcome = _shorter(attempt, s.method, s.seq_len, preset.constraints.min_seq_len) or outcome
        if (not outcome.result.fits and s.method == "lora" and preset.constraints.allow_method_change):
            tried_methods.append("qlora")
            q = attempt("qlora", s.seq_len)
            if not q.result.fits:
                q = _shorter(attempt, "qlora", s.seq_len, preset.constraints.min_seq_len) or q
            if q.result.fits or q.result.choice.memory.device_bytes < outcome.result.choice.memory.device_bytes:
                outcome = q  # it fits, or it comes closest (its suggestions are the useful ones)
    if outcome.result.fits and not outcome.result.choice.throughput.tokens_per_second and s.num_gpus == 1:
        # No speed model for this hardware (the CPU, a bare --vram size): the solver cannot rank
        # micro-batches by speed, so keep the preset's micro-batch, or the largest below it that fits.
        chosen = outcome.result.choice.setup
        for mb in sorted((d for d in range(1, effective + 1) if effective % d == 0), reverse=True):
            if mb > max(s.micro_batch, 1) or mb <= chosen.micro_batch:
                continue
            o = attempt(chosen.method, chosen.seq_len, mb)
            if o.result.fits:
                outcome = o
                break
    new = outcome.result.choice.setup
    changes = tuple((k, getattr(s, k), getattr(new, k)) for k in SHOWN if getattr(s, k) != getattr(new, k))
    target = target_hardware(preset)
    why_hw = _hardware_reason(target, outcome.hardware)
    first_need = first.result.choice.memory.device_bytes
    budget = first.result.budget_bytes
    if outcome.result.fits:
        if new.method != s.method:
            reasons.append(f"{_METHOD[s.method]} does not fit: it needs at least {_gib(first_need)} and "
                           f"{_gib(budget)} may be used here; {_METHOD[new.method]} keeps the frozen weights in "
                           f"4-bit, so it fits (the method changed; constraints.allow_method_change allows it).")
        if new.seq_len != s.seq_len:
            reasons.append(f"Sequence length {s.seq_len} does not fit even at micro-batch 1 with checkpointing; "
                           f"{new.seq_len} is the longest that does (constraints.min_seq_len "
                           f"{preset.constraints.min_seq_len}): longer examples are truncated.")
        here = _card(outcome.hardware)

        def said(keys: tuple[str, ...]) -> str:
            return ", ".join(f"{SHOWN[k]} {_show(k, a)} -> {_show(k, b)}" for k, a, b in changes if k in keys)

        if said(("compute_dtype",)):
            why = (f"{outcome.hardware.gpu.name} has no bfloat16 (fp16 mixed precision with loss scaling)"
                   if new.compute_dtype == "float16" else f"{outcome.hardware.gpu.name} supports {new.compute_dtype}")
            reasons.append(f"{said(('compute_dtype',))}: {why}.")
        if said(("optimizer",)):
            why = ("32-bit AdamW states do not fit beside the rest" if new.optimizer != "adamw"
                   else "32-bit AdamW states fit")
            reasons.append(f"{said(('optimizer',))}: {why} on {here}.")
        geometry = ("micro_batch", "grad_accum", "grad_checkpointing", "attn", "fused_ce")
        if said(geometry):
            if new.method != s.method:
                why_hw = f"the fastest that fits with {_METHOD[new.method]} on {here}"
            reasons.append(f"{said(geometry)}: {why_hw}.")
        if not changes:
            reasons.append(f"Nothing to change: on {here} the planner picks the preset's own configuration.")
        kept = [f"effective batch {new.effective_batch()}"]
        if new.method == s.method:
            kept.append(f"method {_METHOD[s.method]}")
        if new.seq_len == s.seq_len:
            kept.append(f"sequence length {s.seq_len}")
        if s.method != "full":
            kept.append(f"LoRA r{s.lora_rank}/alpha {s.lora_alpha}")
        reasons.append(f"Kept: {', '.join(kept)}. Predicted {_gib(outcome.result.choice.memory.device_bytes)} "
                       f"of {_gib(outcome.result.usable_bytes)} usable.")
    else:
        floor = preset.constraints.min_seq_len or s.seq_len
        for m in tried_methods:
            need = attempt(m, s.seq_len).result.choice.memory.device_bytes
            text = f"{_METHOD[m]} needs at least {_gib(need)} at sequence length {s.seq_len}"
            if floor < s.seq_len:
                text += (f" and {_gib(attempt(m, floor).result.choice.memory.device_bytes)} at {floor} "
                         "(constraints.min_seq_len)")
            reasons.append(f"{text}; {_gib(outcome.result.budget_bytes)} may be used on {_card(outcome.hardware)}.")
        if s.method == "lora" and not preset.constraints.allow_method_change:
            reasons.append("constraints.allow_method_change is false, so QLoRA was not tried.")
        reasons += list(outcome.result.suggestions[1:])
    from tuneplan.config import with_setup

    m = outcome.result.choice.memory
    out = with_setup(config, **{k: getattr(new, k) for k in fields_of(TrainSetup)})
    out = replace(out, prediction=PredictionConfig(torch_peak_bytes=m.torch_peak_bytes, device_bytes=m.device_bytes))
    return Refit(preset=preset, config=out, outcome=outcome, fits=outcome.result.fits, changes=changes,
                 reasons=tuple(reasons), notes=tuple(notes) + tuple(outcome.notes))


def _gpu_count(s: TrainSetup) -> dict[str, Any]:
    """PlanRequest fields that keep a preset's GPU count and strategy (if the planning service
    knows about several GPUs)."""
    from tuneplan.services.planning import PlanRequest

    known = {f.name for f in fields(PlanRequest)}
    out: dict[str, Any] = {}
    if "gpus" in known:
        out["gpus"] = s.num_gpus
    if "strategy" in known and s.num_gpus > 1 and s.strategy in ("ddp", "fsdp"):
        out["strategy"] = s.strategy
    return out


def fields_of(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _shorter(attempt, method: str, seq: int, floor: int | None):
    """The plan with the longest sequence in [floor, seq) that fits (binary search, SEQ_STEP)."""
    if not floor or floor >= seq:
        return None
    lo, hi = -(-floor // SEQ_STEP), (seq - 1) // SEQ_STEP
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        o = attempt(method, max(floor, mid * SEQ_STEP))
        if o.result.fits:
            best, lo = o, mid + 1
        else:
            hi = mid - 1
    return best


def load_preset_config(name: "str | Preset", *, gpu: str | None = None, vram: str | None = None,
                       echo: bool = True, build_sources: bool = True) -> RunConfig:
    """What `tuneplan train --preset NAME` calls: the preset re-fitted for the hardware at
    hand (or `gpu` / `vram`), as a run configuration with bundled sources resolved. Prints the
    re-fit summary to stderr (`echo`). Raises UserError when it cannot fit."""
    from tuneplan.services.planning import parse_size

    preset = find_preset(name) if isinstance(name, str) else name
    fit = refit(preset, gpu=gpu, vram_bytes=parse_size(vram) if vram else None, build_sources=build_sources)
    if echo:
        for line in fit.summary_lines():
            print(f"tuneplan: {line}", file=sys.stderr)
    if not fit.fits:
        raise UserError(f"preset {preset.name} does not fit on {_card(fit.outcome.hardware)}; see the reasons above "
                        f"or `tuneplan plan --preset {preset.name}`")
    return fit.config


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
                  "# Format: README `## Presets`. Saved by tuneplan; edit freely.\n")
    text = header + "\n" + tomli_w.dumps(_toml_dict(name, description, config, constraints, evidence))
    preset_from_toml(text, f"<preset {name}>")  # what we write must read back
    return text


def write_preset_text(text: str, path: Path, *, force: bool = False) -> Path:
    """Write a preset file: never over an existing one unless `force`; never with a token."""
    path = Path(path)
    check_no_secret(text, f"preset {path.name}")
    if path.exists() and not force:
        raise UserError(f"preset {path.stem} already exists ({path}); pick another name or add --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def preset_from_run_config(config: RunConfig, name: str, description: str = "", *,
                           evidence: PresetEvidence | None = None, gpu: str | None = None) -> str:
    """Preset TOML text for a run configuration (what the wizard's review screen and
    `presets save --from RUN` write). The prediction, debug settings, run name and resume
    point are left out; the constraints keep the effective batch and the sequence length."""
    if not NAME_RE.fullmatch(name or ""):
        raise UserError(f"preset name {name!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    description = " ".join((description or "").split())  # one line: it is also the header comment
    config = portable_sources(config)
    clean = RunConfig(model=config.model, data=config.data, setup=config.setup, training=config.training,
                      recovery=config.recovery)
    constraints = PresetConstraints(effective_batch=config.setup.effective_batch(), min_seq_len=config.setup.seq_len,
                                    gpu=gpu)
    return dump_preset(name, description, clean, constraints, evidence)


def save_config_as_preset(config: RunConfig, name: str, description: str = "", *, force: bool = False,
                          folder: Path | None = None, gpu: str | None = None) -> Path:
    """Save a run configuration as a user preset (`folder`: default the user presets folder)."""
    text = preset_from_run_config(config, name, description, gpu=gpu)
    return write_preset_text(text, (folder or user_dir()) / f"{name}.toml", force=force)


def evidence_from_run(run_dir: Path) -> tuple[PresetEvidence, str | None]:
    """What a run measured, from its run folder; and the catalog key of its GPU (or `cpu`).

    Measured figures come from its events (`log`, `memory_probe`); the environment (GPU,
    driver, library versions) from an `environment` event when the run wrote one, else from
    this machine now (`environment_source = "saved"`)."""
    import statistics
    import time

    from tuneplan.events import effective_phase, read_events, read_status

    status = read_status(run_dir)
    events = list(read_events(run_dir))
    logs = [e for e in events if e.get("kind") == "log"]
    probes = [e for e in events if e.get("kind") == "memory_probe"]
    env = next((e for e in reversed(events) if e.get("kind") == "environment"), None)
    tps = [e["tokens_per_second"] for e in logs if isinstance(e.get("tokens_per_second"), (int, float))]
    peaks = [e.get("torch_peak_bytes") for e in probes] + [e.get("torch_allocated_peak_bytes") for e in logs]
    reserved = [e.get("torch_reserved_bytes") for e in probes] + [e.get("torch_reserved_peak_bytes") for e in logs]
    peaks = [p for p in peaks if isinstance(p, int)]
    reserved = [p for p in reserved if isinstance(p, int)]
    predicted = next((e.get("predicted_device_bytes") for e in probes if e.get("predicted_device_bytes")), None)
    fields_: dict[str, Any] = dict(
        run=run_dir.name, recorded=time.strftime("%Y-%m-%d", time.gmtime()),
        outcome=effective_phase(status) if status else None, steps=status.step if status else None,
        final_loss=status.loss if status else None, peak_memory_bytes=max(peaks) if peaks else None,
        peak_reserved_bytes=max(reserved) if reserved else None, predicted_device_bytes=predicted,
        tokens_per_second=round(statistics.median(tps), 1) if tps else None,
    )
    if env is not None:
        source = "run"
        for k in ("gpu_name", "gpu_memory_bytes", "driver_version", "cuda_version", "torch_version",
                  "transformers_version", "peft_version", "trl_version", "bitsandbytes_version"):
            if env.get(k) is not None:
                fields_[k] = env[k]
    else:
        source = "saved"
        fields_.update(_environment_now(cuda_used=bool(peaks)))
    fields_["environment_source"] = source
    fields_ = {k: v for k, v in fields_.items() if v is not None}
    evidence = PresetEvidence(**fields_)
    gpu_key = None
    if evidence.gpu_name == CPU:
        gpu_key = CPU
    elif evidence.gpu_name:
        card = match_nvml(evidence.gpu_name, evidence.gpu_memory_bytes)
        gpu_key = card.key if card else None
    return evidence, gpu_key


def _environment_now(*, cuda_used: bool) -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {}
    for dist, key in (("torch", "torch_version"), ("transformers", "transformers_version"),
                      ("peft", "peft_version"), ("trl", "trl_version"), ("bitsandbytes", "bitsandbytes_version")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    from tuneplan.services.gpu import default_probe

    gpus = default_probe().probe() if cuda_used else []
    if gpus:
        g = max(gpus, key=lambda g: g.total_bytes)
        out.update(gpu_name=g.name, gpu_memory_bytes=g.total_bytes, driver_version=g.driver_version,
                   cuda_version=g.cuda_version)
    else:
        out["gpu_name"] = CPU
    return out


def save_from_run(name: str, run_dir: Path, *, description: str | None = None, force: bool = False,
                  folder: Path | None = None) -> Path:
    """Save a finished run's configuration and evidence as a preset (user folder by default)."""
    from tuneplan.config import load_config
    from tuneplan.events import CONFIG_FILE, effective_phase, read_status

    status = read_status(run_dir)
    phase = effective_phase(status)
    if phase not in ("done", "stopped"):
        raise UserError(f"run {run_dir.name} is {phase}: a preset records a configuration that worked; "
                        "save it from a finished (done or stopped) run")
    config = load_config(run_dir / CONFIG_FILE)
    evidence, gpu_key = evidence_from_run(run_dir)
    if description is None:
        s = config.setup
        description = (f"{_METHOD[s.method]} of {Path(config.model.source).name} from run {run_dir.name}, "
                       f"seq {s.seq_len}, micro-batch {s.micro_batch} x {s.grad_accum}")
    text = preset_from_run_config(config, name, description, evidence=evidence, gpu=gpu_key)
    return write_preset_text(text, (folder or user_dir()) / f"{name}.toml", force=force)


def delete_preset(name: str) -> Path:
    """Delete the preset file `name` resolves to (project or user presets only)."""
    preset = find_preset(name)
    if preset.origin == "shipped":
        raise UserError(f"preset {preset.name} is shipped with tuneplan and cannot be deleted; save your own "
                        "under the same name to shadow it")
    assert preset.path is not None
    preset.path.unlink()
    return preset.path


__all__ = [
    "FORMAT_VERSION", "Preset", "PresetConstraints", "PresetEvidence", "PresetError", "Refit",
    "find_preset", "list_presets", "load_preset_file", "preset_from_toml", "refit", "load_preset_config",
    "save_from_run", "save_config_as_preset", "delete_preset", "search_path", "shipped_dir", "user_dir",
    "project_dir", "resolve_sources", "tiny_model_dir", "local_hardware", "cpu_hardware", "dump_preset",
    "check_no_secret", "evidence_from_run",
]
