"""Where runs live, and the disk-space boundary.

The runs root is, in order: the `--runs-dir` option, the `TUNEPLAN_RUNS_DIR` environment
variable, or the per-user data directory (platformdirs: `~/.local/share/tuneplan/runs` on
Linux, `~/Library/Application Support/tuneplan/runs` on macOS). Each run is one folder
named `<model>-<method>-<YYYYmmdd-HHMMSS>` (a `-2`, `-3` suffix if taken); an existing run
folder is never reused.
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
FREE_BYTES_ENV = "TUNEPLAN_FAKE_FREE_BYTES"
"""Test hook: pretend the runs root's disk has this many free bytes (simulates a full disk)."""


def runs_root(override: str | os.PathLike | None = None) -> Path:
    """The folder that holds run directories (not created here)."""
    if override:
        return _folder(Path(check_path(override, "--runs-dir")).expanduser(), "--runs-dir")
    env = os.environ.get(RUNS_DIR_ENV)
    if env:
        return _folder(Path(check_path(env, RUNS_DIR_ENV)).expanduser(), RUNS_DIR_ENV)
    import platformdirs

    return platformdirs.user_data_path("tuneplan") / "runs"


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
    stem = f"{slug(model)}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a run folder under {root}")


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
