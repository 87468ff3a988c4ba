"""The shipped model catalog: every file is valid, lookups are forgiving, typos get suggestions."""

from __future__ import annotations

import json
import re

import pytest

from planner import catalog
from planner.spec import SUPPORTED_MODEL_TYPES

FILES = sorted(catalog.MODELS_DIR.glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_catalog_file_is_complete(path):
    raw = json.loads(path.read_text())
    assert raw["name"] == path.stem == raw["name"].lower()
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", raw["hub_id"])
    assert raw["source"] == f"https://huggingface.co/{raw['hub_id']}/blob/main/config.json"
    assert raw["license"] and isinstance(raw["gated"], bool)
    assert raw["config"]["model_type"] in SUPPORTED_MODEL_TYPES
    assert raw["config"].get("architectures"), "a real config.json names its architectures"
    assert set(raw) <= {"name", "hub_id", "source", "license", "gated", "aliases", "official_parameters", "note", "config"}
    catalog.get(raw["name"]).spec()  # builds


def test_catalog_covers_the_promised_range():
    names = set(catalog.names())
    for required in [
        "llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b", "mistral-7b-v0.3", "mistral-nemo-12b",
        "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
        "qwen2.5-72b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-30b-a3b", "gemma-2-9b", "gemma-2-27b",
        "gemma-3-12b", "gemma-3-27b", "phi-3-mini", "phi-3-medium",
    ]:
        assert required in names
    sizes = [e.spec().parameter_count() for e in catalog.entries()]
    assert min(sizes) < 0.6e9 and max(sizes) > 72e9
    families = {e.spec().model_type for e in catalog.entries()}
    assert families == set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Llama-3.1-8B", "llama-3.1-8b"),
        ("llama3.1-8b", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
        ("  LLAMA_3.1_8B ", "llama-3.1-8b"),
        ("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b"),
        ("qwen3-moe", "qwen3-30b-a3b"),
        ("Mistral-Nemo-Base-2407", "mistral-nemo-12b"),
        ("phi3-mini", "phi-3-mini"),
    ],
)
def test_lookup_ignores_case_and_separators(query, expected):
    assert catalog.get(query).name == expected


def test_names_and_aliases_do_not_collide():
    seen = {}
    for e in catalog.entries():
        for key in {catalog.normalize(e.name), *map(catalog.normalize, e.aliases)}:
            assert seen.setdefault(key, e.name) == e.name, key


def test_typo_gets_suggestions():
    with pytest.raises(catalog.UnknownModel) as err:
        catalog.get("lama-3.1-8b")
    assert "llama-3.1-8b" in err.value.suggestions
    assert "llama-3.1-8b" in str(err.value) and "lama-3.1-8b" in str(err.value)
    assert catalog.find("no-such-model-at-all") is None
    assert catalog.suggestions("zzzzzz") == ()


def test_load_spec_is_cached_and_named():
    spec = catalog.load_spec("Qwen2.5-0.5B")
    assert spec is catalog.load_spec("qwen2.5-0.5b")
    assert spec.name == "qwen2.5-0.5b"


def test_gated_and_licences_as_on_the_hub():
    assert catalog.get("llama-3.1-8b").gated and catalog.get("gemma-2-9b").gated
    assert not catalog.get("qwen2.5-7b").gated and catalog.get("qwen2.5-7b").license == "apache-2.0"
    assert catalog.get("phi-3-mini").license == "mit"


def test_wheel_ships_the_catalog(tmp_path):
    """The catalog is package data: a built wheel holds every models/*.json."""
    import subprocess
    import sys
    import zipfile

    root = catalog.MODELS_DIR.parents[1]
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(root)],
        check=True, capture_output=True,
    )
    names = zipfile.ZipFile(next(tmp_path.glob("tuneplan-*.whl"))).namelist()
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("planner/models/") and n.endswith(".json")}
    assert shipped == {p.name for p in FILES}


def test_readme_lists_every_entry():
    readme = (catalog.MODELS_DIR / "README.md").read_text()
    for e in catalog.entries():
        assert f"| `{e.name}` | [{e.hub_id}]({e.source}) |" in readme, e.name
