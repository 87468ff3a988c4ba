"""The user's folders (runs, presets, the config file, the cache), and the disk-space boundary.

Each comes from its environment variable when set, else from the platform's per-user folder
(platformdirs; Linux shown): runs `TUNEPLAN_RUNS_DIR` or `~/.local/share/tuneplan/runs`
(`--runs-dir` wins over both), user presets `TUNEPLAN_PRESETS_DIR` or
`~/.config/tuneplan/presets`, the user config file `TUNEPLAN_CONFIG` or
`~/.config/tuneplan/config.toml`, the cache (the built tiny model) `TUNEPLAN_CACHE_DIR` or
`~/.cache/tuneplan`. On macOS the data and config folders are `~/Library/Application
Support/tuneplan`, the cache `~/Library/Caches/tuneplan`.

Each run is one folder named `<model>-<method>-<YYYYmmdd-HHMMSS>` (a `-2`, `-3` suffix if
taken); an existing run folder is never reused.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from tuneplan.errors import UserError, check_path
from tuneplan.events import CONFIG_FILE, created_at

RUNS_DIR_ENV = "TUNEPLAN_RUNS_DIR"
PRESETS_DIR_ENV = "TUNEPLAN_PRESETS_DIR"
"""Overrides the user presets folder (the wizard's review screen saves there too)."""
USER_CONFIG_ENV = "TUNEPLAN_CONFIG"
"""Path of the user config file (`[notify]`, `tuneplan/services/notify.py`)."""
CACHE_DIR_ENV = "TUNEPLAN_CACHE_DIR"
"""Overrides the cache folder that holds the built tiny model."""
FREE_BYTES_ENV = "TUNEPLAN_FAKE_FREE_BYTES"
"""Test hook: pretend the runs root's disk has this many free bytes (simulates a full disk)."""


def _user_path(env: str, kind: str, *parts: str) -> Path:
    """`$env` when set (`~` expanded), else platformdirs' per-user `kind` folder of tuneplan
    (`data`, `config` or `cache`) joined with `parts`. Nothing is created here."""
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser()
    import platformdirs

    base = {"data": platformdirs.user_data_path, "config": platformdirs.user_config_path,
            "cache": platformdirs.user_cache_path}[kind]("tuneplan")
    return base.joinpath(*parts)


def runs_root(override: str | os.PathLike | None = None) -> Path:
    """The folder that holds run directories (not created here)."""
    if override:
        return _folder(Path(check_path(override, "--runs-dir")).expanduser(), "--runs-dir")
    if os.environ.get(RUNS_DIR_ENV):
        return _folder(Path(check_path(os.environ[RUNS_DIR_ENV], RUNS_DIR_ENV)).expanduser(), RUNS_DIR_ENV)
    return _user_path(RUNS_DIR_ENV, "data", "runs")


def user_presets_dir() -> Path:
    """User presets: `$TUNEPLAN_PRESETS_DIR`, else the user config folder + `presets`."""
    return _user_path(PRESETS_DIR_ENV, "config", "presets")


def user_config_file() -> Path:
    """The user config file: `$TUNEPLAN_CONFIG`, else the user config folder + `config.toml`."""
    return _user_path(USER_CONFIG_ENV, "config", "config.toml")


def cache_dir() -> Path:
    """The cache (the built tiny model): `$TUNEPLAN_CACHE_DIR`, else the user cache folder."""
    return _user_path(CACHE_DIR_ENV, "cache")


def _folder(path: Path, what: str) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: pick another {what}")
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent)."""
    fake = os.environ.get(FREE_BYTES_ENV)
    if fake:
        return int(fake)
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def slug(text: str) -> str:
    """A folder-safe short name: `meta-llama/Llama-3.1-8B` -> `llama-3.1-8b`."""
    base = text.rstrip("/").split("/")[-1].lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base).strip("-.")
    return base[:40] or "run"


def new_run_dir(root: Path, name: str | None, *, model: str, method: str) -> Path:
    """Create and return a fresh run folder under `root`. A given `name` that exists is an
    error; a derived one gets a numeric suffix."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"runs folder {root} is a file, not a folder: pick another --runs-dir") from None
    except OSError as exc:
        raise UserError(f"cannot create the runs folder {root}: {exc.strerror or exc}; pick another --runs-dir") from None
    if name:
        check_path(name, "run name")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"run name {name!r} may contain only letters, digits, '.', '_' and '-'")
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            raise UserError(f"run {name!r} already exists in {root}; pick another --name") from None
        return path
    return new_folder(root, f"{slug(model)}-{method}-{time.strftime('%Y%m%d-%H%M%S')}", "run")


def new_folder(root: Path, stem: str, what: str) -> Path:
    """A folder `stem` (or `stem-2`, `stem-3`, ...) made fresh under `root`: never one that exists."""
    for i in range(1, 1000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a {what} folder under {root}")


def list_run_dirs(root: Path) -> list[Path]:
    """Run folders under `root`, oldest first (by creation)."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists()]
    return sorted(runs, key=lambda p: (created_at(p), p.name))


def resolve_run(name: str | None, root: Path) -> Path:
    """A run folder from a name, a path, or `None`/`latest` for the newest run."""
    if name and name != "latest":
        check_path(name, "the run name")
        p = Path(name).expanduser()
        if p.is_dir() and (p / CONFIG_FILE).exists():
            return p
        p = root / name
        if p.is_dir() and (p / CONFIG_FILE).exists():
            return p
        known = [r.name for r in list_run_dirs(root)][-5:]
        hint = f"; recent runs: {', '.join(known)}" if known else f"; no runs in {root}"
        raise UserError(f"no run named {name!r}{hint} (see `tuneplan runs`)")
    runs = list_run_dirs(root)
    if not runs:
        raise UserError(f"no runs in {root}; start one with `tuneplan train` (or pass --runs-dir)")
    return runs[-1]
