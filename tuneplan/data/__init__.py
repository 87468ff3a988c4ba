"""Data shipped with tuneplan: the sample chat dataset, the tiny model's config and the
shipped presets (`presets/`, one TOML file per preset, data only)."""

from importlib.resources import files
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SAMPLE_CHAT = DATA_DIR / "sample_chat.jsonl"
"""A few hundred short chat examples (arithmetic and word tasks), `messages` format."""
TINY_MODEL_CONFIG = DATA_DIR / "tiny_llama_config.json"
"""config.json of the tiny Llama-style model (`tuneplan.training.tiny.build_tiny_model`)."""
TINY_MODEL = "tuneplan:tiny"
"""The name that stands for the bundled tiny model (`--model tuneplan:tiny`, presets, the wizard)."""
SHIPPED_PRESETS = Path(str(files(__name__).joinpath("presets")))
"""The presets shipped with tuneplan, package data found through `importlib.resources` (inside
the package, so a `./presets/` folder in the working directory is never taken for them)."""
