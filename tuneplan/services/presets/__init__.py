"""Presets: a configuration that worked, saved as a TOML file, re-fitted to the hardware at hand.

A preset is a partial run configuration (`tuneplan.config`: model, data, setup knobs,
training hyperparameters, recovery) plus the constraints to keep when it is re-fitted
(effective batch, shortest acceptable sequence length, the GPU it was made for) and, when it
was saved from a finished run, the evidence of that run (GPU, driver and library versions,
measured peak memory, tokens/s). The format is documented in docs/presets.md.

    preset = find_preset("llama-3.1-8b-lora-24gb")       # search order below
    fit = refit(preset, vram_bytes=16 * GiB)             # re-plan with the real planner
    fit.config, fit.changes, fit.summary_lines()

Search order, first match wins: `./presets/` (project-local, the current directory), the
user folder (`$TUNEPLAN_PRESETS_DIR`, else platformdirs `user_config_dir("tuneplan")/presets`),
then the presets shipped inside the package (the `presets` data folder). A NAME that ends in
`.toml` or contains a `/` is a file path.

Files are read with `tomllib` only: nothing in them is executed or evaluated. A Hub token is
never written into a preset: saving refuses any text that holds one. No torch, no textual.

The package: `file_format` (the types, reading and writing a preset file), `store` (where
presets live, find/list/save/delete; the bundled sources are `tuneplan.services.bundled`), `refit` (re-fitting to the hardware
at hand) and `evidence` (a finished run's measurements). Import from the package.
"""


from tuneplan.data import TINY_MODEL
from tuneplan.services.gpu import CPU_KEY as CPU
from tuneplan.services.gpu import cpu_hardware
from tuneplan.knobs import REFITTED, SHOWN
from tuneplan.services.presets.evidence import evidence_from_run, save_from_run
from tuneplan.services.presets.file_format import (
    FORMAT_VERSION, NAME_RE, SETUP_KEYS, TOKEN_ENV, TOKEN_RE, Preset, PresetConstraints, PresetError, PresetEvidence,
    check_no_secret, dump_preset, load_preset_file, preset_from_toml,
)
from tuneplan.services.presets.refit import (
    SEQ_STEP, Refit, load_preset_config, local_hardware, refit, target_hardware, with_knobs,
)
from tuneplan.services.paths import CACHE_DIR_ENV, PRESETS_DIR_ENV, cache_dir
from tuneplan.services.presets.store import (
    PresetEntry, deletable, delete_preset, find_preset, list_presets, preset_from_run_config, project_dir,
    save_config_as_preset, search_path, shipped_dir, user_dir, write_preset_text,
)
# the bundled sources live in their own module; named here too, as the presets' sources
from tuneplan.services.bundled import (
    SAMPLE_DATA, portable_sources, resolve_sources, tiny_model_dir,
)

__all__ = [
    "FORMAT_VERSION", "Preset", "PresetConstraints", "PresetEvidence", "PresetError", "Refit",
    "find_preset", "list_presets", "load_preset_file", "preset_from_toml", "refit", "load_preset_config",
    "save_from_run", "save_config_as_preset", "delete_preset", "deletable", "search_path", "shipped_dir", "user_dir",
    "project_dir", "resolve_sources", "tiny_model_dir", "local_hardware", "cpu_hardware", "dump_preset",
    "check_no_secret", "evidence_from_run", "target_hardware", "write_preset_text", "preset_from_run_config",
    "portable_sources", "cache_dir", "PresetEntry", "CPU", "TINY_MODEL", "SAMPLE_DATA", "PRESETS_DIR_ENV",
    "CACHE_DIR_ENV", "with_knobs", "SETUP_KEYS", "REFITTED", "SHOWN", "SEQ_STEP", "NAME_RE", "TOKEN_ENV", "TOKEN_RE",
]
