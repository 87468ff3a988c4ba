"""The assets bundled with tuneplan: the tiny model (`tuneplan:tiny`, built once into the
cache folder) and the sample chat dataset (`tuneplan:sample-chat`), and the mapping between
those names and their paths on this machine (`resolve_sources` / `portable_sources`).

Its own module, below `models`, `presets` and `planning`, so that resolving the tiny model does
not import the presets (which import the planning service, which imports the models service).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from tuneplan.config import RunConfig
from tuneplan.data import TINY_MODEL
from tuneplan.errors import UserError
from tuneplan.services.paths import CACHE_DIR_ENV, cache_dir  # noqa: F401  (the user folders: services/paths.py)

SAMPLE_DATA = "tuneplan:sample-chat"
"""`data.source` of the bundled sample chat dataset."""


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


def dataset_path(source: str) -> str:
    """`source` with the bundled sample's name (`tuneplan:sample-chat`) replaced by its file; any
    other source as given."""
    from tuneplan.data import SAMPLE_CHAT

    return str(SAMPLE_CHAT) if source == SAMPLE_DATA else source


def resolve_sources(config: RunConfig, *, build: bool = True) -> RunConfig:
    """Replace the bundled-source names (`tuneplan:tiny`, `tuneplan:sample-chat`) by paths."""

    if config.model.source == TINY_MODEL:
        config = replace(config, model=replace(config.model, source=str(tiny_model_dir(build=build))))
    elif config.model.source.startswith("tuneplan:"):
        raise UserError(f"model.source {config.model.source!r}: the bundled model is {TINY_MODEL}")
    if config.data.source == SAMPLE_DATA:
        config = replace(config, data=replace(config.data, source=dataset_path(SAMPLE_DATA)))
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
