"""Where presets live (project folder, user folder, the shipped ones), finding, listing, saving
and deleting them. The bundled sources (`tuneplan:tiny`, `tuneplan:sample-chat`) are
`tuneplan.services.bundled`'s."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from tuneplan.config import (
    RunConfig,
)
from tuneplan.errors import UserError, check_path
from tuneplan.services import paths
from tuneplan.services.bundled import portable_sources
from tuneplan.services.presets.file_format import (
    NAME_RE, Preset, PresetConstraints, PresetEvidence, check_no_secret, dump_preset, load_preset_file,
)



# -- where presets live --------------------------------------------------------------------------
def project_dir() -> Path:
    """Project-local presets: `./presets/` under the current directory."""
    return Path.cwd() / "presets"


def user_dir() -> Path:
    """User presets (`services/paths.py`: `$TUNEPLAN_PRESETS_DIR`, else the user config folder)."""
    return paths.user_presets_dir()


def shipped_dir() -> Path:
    """The presets shipped with tuneplan: package data of `tuneplan.data`
    (`importlib.resources`), never a `presets` folder that happens to be importable."""
    from tuneplan.data import SHIPPED_PRESETS

    return SHIPPED_PRESETS


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
            except Exception as exc:  # whatever else is wrong with one file must not hide the others
                preset, error = None, f"{path}: unreadable ({type(exc).__name__})"
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
        if os.path.lexists(path):  # a FIFO or device too: loading it says what is wrong in one line
            preset = load_preset_file(path, origin)
            return preset
    names = sorted({e.name for e in list_presets()})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(f"no preset named {name!r}: {hint}see `tuneplan presets list`")


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


def deletable(preset: Preset) -> None:
    """Refuse (one line) to delete a preset that is not the user's own: only a file that lies
    directly in the user presets folder or the project's `./presets/` may go. A path given on
    the command line can name any file that parses as a preset (a shipped one inside the
    installed package, one in another project); `presets delete` is for the user's presets,
    and anything else is deleted with `rm`, knowingly."""
    assert preset.path is not None
    if preset.origin == "shipped" or _same(preset.path.parent, shipped_dir()):
        raise UserError(f"preset {preset.name} is shipped with tuneplan and cannot be deleted; save your own "
                        "under the same name to shadow it")
    if not any(_same(preset.path.parent, folder) for origin, folder in search_path() if origin != "shipped"):
        raise UserError(f"{preset.path} is not in your presets folders ({user_dir()} or ./presets/); "
                        "`presets delete` deletes only those (remove other files yourself)")


def delete_preset(name: str) -> Path:
    """Delete the preset file `name` resolves to (project or user presets only)."""
    preset = find_preset(name)
    deletable(preset)
    assert preset.path is not None
    preset.path.unlink()
    return preset.path
