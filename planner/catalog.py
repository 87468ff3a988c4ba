"""The built-in model catalog: real `config.json` files of popular open LLMs.

One JSON file per model in `planner/models/<name>.json`:

    {"name": "llama-3.1-8b", "hub_id": "meta-llama/Llama-3.1-8B",
     "source": "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json",
     "license": "llama3.1", "gated": true, "aliases": ["llama3.1-8b", ...],
     "official_parameters": 8030261248,   # optional: the count the model card states
     "note": "...",                        # optional
     "config": {... the repo's config.json ...}}

`tests/planner/test_catalog.py` validates every file; `tests/planner/test_spec_exact.py`
builds every config with transformers on the meta device and checks the exact count.

Lookups are forgiving: case, `-`, `_`, `.`, `/` and spaces are ignored where that leaves no
ambiguity ("Llama-3.1-8B", "llama3.1-8b" and "meta-llama/Llama-3.1-8B" all find the same
entry); a miss raises `UnknownModel` with close matches (difflib).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from planner.spec import ModelSpec, spec_from_config

MODELS_DIR = Path(__file__).resolve().parent / "models"


class UnknownModel(KeyError):
    """A name that is no catalog entry; `suggestions` holds close catalog names."""

    def __init__(self, name: str, suggestions: tuple[str, ...]):
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown catalog model {name!r}{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class CatalogEntry:
    """One shipped model: its config.json and where it came from."""

    name: str
    """Catalog name, lower case (`llama-3.1-8b`)."""
    hub_id: str
    """Hugging Face repo the config was taken from (and that training downloads)."""
    source: str
    """URL of the config.json."""
    license: str
    """Licence id as the Hub card states it (`apache-2.0`, `llama3.1`, `gemma`, ...)."""
    gated: bool
    """Whether the Hub repo asks users to accept terms before download (a token is then needed)."""
    aliases: tuple[str, ...]
    """Other names that find this entry."""
    config: Mapping[str, Any]
    """The config.json as shipped (treat as read-only)."""
    official_parameters: int | None = None
    """Parameter count the model card / safetensors index states, when known."""
    note: str | None = None
    """Anything a user should know (e.g. a multimodal checkpoint)."""

    def spec(self) -> ModelSpec:
        """The exact `ModelSpec` of this entry, named after it."""
        return _spec(self.name)


def normalize(name: str) -> str:
    """Lower case with `-`, `_`, `.`, `/` and spaces removed: the key lookups compare."""
    return re.sub(r"[\s\-_./]+", "", name.strip().lower())


def _read(path: Path) -> CatalogEntry:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return CatalogEntry(
        name=raw["name"],
        hub_id=raw["hub_id"],
        source=raw["source"],
        license=raw["license"],
        gated=bool(raw["gated"]),
        aliases=tuple(raw.get("aliases", ())),
        config=raw["config"],
        official_parameters=raw.get("official_parameters"),
        note=raw.get("note"),
    )


@lru_cache(maxsize=1)
def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog entry, sorted by name."""
    return tuple(sorted((_read(p) for p in MODELS_DIR.glob("*.json")), key=lambda e: e.name))


def names() -> tuple[str, ...]:
    """Catalog names, sorted."""
    return tuple(e.name for e in entries())


@lru_cache(maxsize=1)
def _index() -> dict[str, CatalogEntry]:
    """Normalized name / alias / hub id -> entry. A key two entries share maps to neither."""
    index: dict[str, CatalogEntry] = {}
    clashes: set[str] = set()
    for e in entries():
        for key in {normalize(e.name), normalize(e.hub_id), normalize(e.hub_id.split("/")[-1]), *map(normalize, e.aliases)}:
            if key in index and index[key] is not e:
                clashes.add(key)
            index[key] = e
    for key in clashes:
        index.pop(key, None)
    # exact catalog names always win
    for e in entries():
        index[normalize(e.name)] = e
    return index


def find(name: str) -> CatalogEntry | None:
    """The entry `name` refers to (name, alias or Hub id, separator/case-insensitive), else None."""
    return _index().get(normalize(name))


def suggestions(name: str, n: int = 3) -> tuple[str, ...]:
    """Up to `n` catalog names close to `name` (difflib ratio over normalized keys)."""
    index = _index()
    close = difflib.get_close_matches(normalize(name), list(index), n=n * 3, cutoff=0.6)
    out: list[str] = []
    for key in close:
        if index[key].name not in out:
            out.append(index[key].name)
    return tuple(out[:n])


def get(name: str) -> CatalogEntry:
    """The entry for `name`; raises `UnknownModel` (with suggestions) when there is none."""
    entry = find(name)
    if entry is None:
        raise UnknownModel(name, suggestions(name))
    return entry


@lru_cache(maxsize=None)
def _spec(name: str) -> ModelSpec:
    entry = get(name)
    return spec_from_config(entry.config, entry.name)


def load_spec(name: str) -> ModelSpec:
    """The exact `ModelSpec` of catalog model `name` (cached); raises `UnknownModel`."""
    return _spec(get(name).name)
