"""Starting and finding runs: what `tuneplan train` and the wizard's Launch both do.

    config, given = assemble(request)   # the run configuration asked for, knobs not yet planned
    prepared = prepare(request)         # ... planned for the target, checked against this machine
    run_dir, proc = launch(prepared.config, runs_root=root, checked=True)

The CLI parses its flags into a `RunRequest` and prints; the wizard builds its configuration
from the plan on screen (`run_config`) and launches it. Both start the run here.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from tuneplan.app.requests import RunRequest, Target


@dataclass(frozen=True)
class Prepared:
    """A run configuration ready to launch here, and what to tell the user about it."""

    config: Any
    """The `RunConfig` (knobs planned, sources resolved, the setup this machine runs)."""
    notes: tuple[str, ...]
    """Where the hardware came from, the plan's notes and warnings, the machine's rule."""
    local_gpus: int = 0
    """NVIDIA GPUs NVML finds here (0: the run trains on the CPU)."""


# -- the run configuration -------------------------------------------------------------------
def apply_settings(config: Any, settings: dict[str, Any] | Any) -> Any:
    """`config` with the `section.field` -> value overrides of `settings` (`training.epochs`)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    return replace(config, **{s: replace(getattr(config, s), **changes) for s, changes in sections.items()})


def assemble(request: RunRequest) -> tuple[Any, Any]:
    """(the run configuration from `request.config_file` / `request.preset` and the overrides,
    not yet planned; the `PartialSetup` of the knobs they fix: the planner chooses the others).
    A preset is re-fitted to `request.target` first (its summary goes to stderr)."""
    from tuneplan.config import RunConfig, config_from_dict, read_toml_text
    from tuneplan.errors import UserError
    from tuneplan.knobs import PLANNED, PartialSetup
    from tuneplan.services.bundled import resolve_sources
    from tuneplan.services.models import remote_code_request

    if request.config_file and request.preset:
        raise UserError("give either --config or --preset, not both")
    file = PartialSetup()
    model = request.model if isinstance(request.model, str) else None
    if request.config_file:
        data, text = read_toml_text(Path(request.config_file))
        config = config_from_dict(data, where=str(request.config_file), text=text)
        file = PartialSetup.from_setup(config.setup, data.get("setup") or {})
    elif request.preset:
        from tuneplan.services import presets

        preset = presets.find_preset(request.preset)
        if not request.trust_remote_code:  # refuse before the re-fit prints its notes
            asked = preset.config.model
            remote_code_request(model or asked.source, requested=asked.trust_remote_code, granted=False)
        # knob flags over a preset are re-fitted with it, so its summary ("Kept: method ...") is the run's
        over = request.setup.fixed()
        if over:
            from tuneplan.knobs import BY_NAME

            print("tuneplan: re-fitting the preset with your flags over it: "
                  + ", ".join(f"{BY_NAME[k].flag} {BY_NAME[k].show(v)}" for k, v in over.items()), file=sys.stderr)
        preset = presets.with_knobs(preset, over)
        config = presets.load_preset_config(preset, gpu=request.target.gpu, vram_bytes=request.target.vram_bytes,
                                            gpu_index=request.target.index, safety_margin=request.safety_margin)
        # a named preset is a complete, already re-fitted configuration; a preset file fixes its [setup] keys
        keys = preset.setup_keys if Path(request.preset).suffix else PLANNED
        file = PartialSetup.from_setup(config.setup, keys)
    else:
        config = RunConfig()
    given = request.setup.over(file)
    if model:
        config = replace(config, model=replace(config.model, source=model))
    if isinstance(request.dataset, str) and request.dataset is not None:
        config = replace(config, data=replace(config.data, source=request.dataset))
    config = replace(apply_settings(config, request.settings), setup=given.apply(config.setup))
    if request.name:
        config = replace(config, name=request.name)
    if not config.model.source:
        raise UserError("no model: give --model (catalog name, Hub id or folder), --config or --preset")
    if not config.data.source:
        raise UserError("no dataset: give --dataset (JSONL/JSON/CSV/Parquet file or Hub id), --config or --preset")
    config = config.validate()  # every number finite and in range before anything is planned or started
    # a file may ask for the model's own code; only --trust-remote-code grants it
    config = resolve_sources(config)  # tuneplan:tiny / tuneplan:sample-chat -> their folder and file
    trust = remote_code_request(config.model.source, requested=config.model.trust_remote_code,
                                granted=bool(request.trust_remote_code))
    return replace(config, model=replace(config.model, trust_remote_code=trust)), given


def plan_config(config: Any, given: Any, request: RunRequest, *, probe: Any = None) -> tuple[Any, list[str]]:
    """Let the planner choose the knobs `given` (a `PartialSetup`) leaves to it, for
    `request.target` (the same solver as `tuneplan plan`). Returns (config, notes); raises
    UserError when nothing fits."""
    if not given.auto():
        return config, []
    from tuneplan.app.planning import is_bundled_tiny, plan
    from tuneplan.app.resolving import resolve_model
    from tuneplan.config import PredictionConfig
    from tuneplan.errors import UserError
    from tuneplan.knobs import KNOBS, LONGEST, PartialSetup

    target = request.target
    if not target.named() and target.hardware is None:
        if probe is None:
            from tuneplan.services.gpu import default_probe

            probe = default_probe()
        # no GPU and no target: the bundled tiny model is planned for the CPU (the planning
        # service's rule, as in `tuneplan plan`); any other needs a GPU
        if not probe.probe() and not is_bundled_tiny(resolve_model(config.model.source)):
            raise UserError(f"no NVIDIA GPU here to train {config.model.source} on ({probe.status()}): plan "
                            "for a card with `tuneplan plan --gpu NAME`, or train here anyway with --gpu NAME "
                            "or --vram SIZE and --force")
    fixed = {k.name: getattr(config.setup, k.name) for k in KNOBS if given.is_fixed(k.name)}
    if given.longest():  # `--seq-len max`: the planner searches the longest that fits
        fixed["seq_len"] = LONGEST
    host_ram = request.host_ram_bytes
    if host_ram is None and target.named():  # planned for a named card, but the run (and its offloaded
        from tuneplan.services.gpu import ram_bytes  # activations) is here

        host_ram = ram_bytes()[1]
    outcome = plan(replace(request, model=config.model.source, dataset=config.data.source, setup=PartialSetup(fixed),
                           settings={"training.epochs": config.training.epochs}, target=target,
                           # training runs here: a card or size named means one such GPU unless --gpus says more
                           one_gpu=target.named(), host_ram_bytes=host_ram), probe=probe)
    result = outcome.result
    if not result.fits:
        hint = f"; {result.suggestions[0]}" if result.suggestions else ""
        raise UserError(f"no configuration of {config.model.source} fits {outcome.hardware.gpu.name}{hint} "
                        f"(see `tuneplan plan --model {config.model.source}`)")
    choice = result.choice
    config = replace(config, setup=choice.setup,
                     prediction=PredictionConfig(torch_peak_bytes=choice.memory.torch_peak_bytes,
                                                 device_bytes=choice.memory.device_bytes))
    notes = list(outcome.notes) + list(result.warnings) + [f"planned: {choice.describe()}"]
    return config, notes


def check_machine(target: Target, *, force: bool = False, what: str | None = None,
                  probe: Any = None) -> tuple[list[Any], list[str]]:
    """The GPUs NVML finds here, checked against a named card or size (`what`: how the user
    named it, for the message); one-line refusal unless `force`."""
    from tuneplan.services import machine

    return machine.check_target_here(target.gpu, target.vram_bytes, probe, force=force, flag_text=what)


def check_model_access(config: Any) -> None:
    """A gated catalog or Hub model needs a Hub token (and access) before anything launches."""
    from tuneplan.services import models

    models.check_source_access(config.model.source)


def for_this_machine(setup: Any, local_gpus: int) -> tuple[Any, str | None]:
    """The setup a launch here runs (float32 on a machine without an NVIDIA GPU) and a note."""
    from tuneplan.services.machine import setup_for_this_machine

    return setup_for_this_machine(setup, local_gpus)


def prepare(request: RunRequest, *, what: str | None = None, probe: Any = None) -> Prepared:
    """`assemble`, checked against this machine and the model's access, planned, and adapted to
    this machine: the configuration `tuneplan train` launches."""
    config, given = assemble(request)
    gpus, notes = check_machine(request.target, force=request.force, what=what, probe=probe)
    check_model_access(config)
    config, plan_notes = plan_config(config, given, request, probe=probe)
    setup, dtype_note = for_this_machine(config.setup, len(gpus))
    return Prepared(replace(config, setup=setup), tuple(notes + plan_notes + ([dtype_note] if dtype_note else [])),
                    len(gpus))


def run_config(model_source: str, data_source: str, setup: Any, settings: dict[str, Any], *,
               prediction: Any = None) -> Any:
    """A run configuration from its parts (the wizard's: the plan on screen and the review's
    fields), not yet validated. `prediction`: the plan's `MemoryEstimate`."""
    from tuneplan.config import DataConfig, ModelConfig, PredictionConfig, RunConfig

    config = RunConfig(model=ModelConfig(source=model_source), data=DataConfig(source=data_source), setup=setup,
                       prediction=PredictionConfig() if prediction is None else PredictionConfig(
                           torch_peak_bytes=prediction.torch_peak_bytes, device_bytes=prediction.device_bytes))
    return apply_settings(config, settings)


def check_tracker(report_to: str) -> None:
    """A one-line UserError when the experiment tracker's package is missing."""
    from tuneplan.services.tracking import check_tracker as check

    check(report_to)


# -- launching ---------------------------------------------------------------------------------
@contextmanager
def _pinned(gpu_index: int | None) -> Iterator[None]:
    """`gpu_index` (NVML numbering) pins a child started inside to that GPU: it inherits
    CUDA_VISIBLE_DEVICES with CUDA ordering by PCI bus, as NVML orders (unless the user pinned
    one already)."""
    if gpu_index is None or "CUDA_VISIBLE_DEVICES" in os.environ:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    os.environ.update(CUDA_VISIBLE_DEVICES=str(gpu_index), CUDA_DEVICE_ORDER="PCI_BUS_ID")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_run(config: Any, *, runs_root: Path | str | None = None, checked: bool = False) -> Path:
    """A fresh run folder under the runs root, checked (disk space, dataset) and holding the
    configuration; nothing started yet. Unless `checked` (`prepare` did it): the model's access
    is checked and the bundled sources resolved first."""
    from tuneplan.services import launcher, paths
    from tuneplan.services.bundled import resolve_sources

    if not checked:
        check_model_access(config)  # a gated model needs a Hub token first, as in `train`
        config = resolve_sources(config)  # tuneplan:tiny -> its built folder
    return launcher.prepare_run(config, paths.runs_root(runs_root))


def start_run(run_dir: Path, *, gpu_index: int | None = None, detach: bool = True) -> Any:
    """Start the training process of a run folder `create_run` made (detached unless `detach`
    is False); `gpu_index`: pin it to that GPU. The process."""
    from tuneplan.services import launcher

    with _pinned(gpu_index):
        return launcher.start_process(run_dir, detach=detach)


def launch(config: Any, *, runs_root: Path | str | None = None, gpu_index: int | None = None, detach: bool = True,
           checked: bool = False) -> tuple[Path, Any]:
    """`create_run`, then `start_run`: (the run folder, the process)."""
    run_dir = create_run(config, runs_root=runs_root, checked=checked)
    return run_dir, start_run(run_dir, gpu_index=gpu_index, detach=detach)


def resume(run: str | None, runs_dir: str | None = None, *, detach: bool = True) -> tuple[Path, Path, Any]:
    """Resume the run `run` names from its last checkpoint: (run folder, checkpoint, process)."""
    from tuneplan.services import launcher, runs

    run_dir = runs.find_run(run, runs_root(runs_dir))
    ckpt, proc = launcher.resume(run_dir, detach=detach)
    return run_dir, ckpt, proc


# -- finding runs ------------------------------------------------------------------------------
def runs_root(override: Path | str | None = None) -> Path:
    """The runs root: `override`, else `$TUNEPLAN_RUNS_DIR`, else the per-user data folder."""
    from tuneplan.services import paths

    return paths.runs_root(override)


def find_run(run: str | None, runs_dir: Path | str | None = None) -> Path:
    """The run folder `run` names: a folder path, or a run name under the runs root; None: the
    newest run. One-line UserError."""
    from tuneplan.errors import UserError, check_path
    from tuneplan.services import runs

    if run and Path(check_path(run, "the run name")).expanduser().is_dir():
        return Path(run).expanduser().resolve()
    root = runs_root(runs_dir)
    if run:
        return Path(runs.find_run(run, root))
    found = runs.newest_run(root)
    if found is None:
        raise UserError(f"no runs in {root}: start one with `tuneplan` or `tuneplan train`")
    return Path(found)


def newest_run(runs_dir: Path | str | None = None) -> Path | None:
    from tuneplan.services import runs

    return runs.newest_run(runs_root(runs_dir))


def request_save(run_dir: Path) -> None:
    """Ask the run to checkpoint now."""
    from tuneplan.services import runs

    runs.request_save(run_dir)


def request_stop(run_dir: Path) -> None:
    """Ask the run to checkpoint and stop."""
    from tuneplan.services import runs

    runs.request_stop(run_dir)


def save_preset(config: Any, name: str, description: str, *, gpu: str | None = None) -> Path:
    """Save a run configuration as a user preset (never over an existing one)."""
    from tuneplan.services import presets

    return presets.save_config_as_preset(config, name, description, gpu=gpu)


def probe_config(config: Any, gpu_index: int | None = None, *, timeout: float = 900.0) -> tuple[str, bool]:
    """`tuneplan probe --config ... --random-weights` in its own process (blocking): a few
    optimizer steps of `config` on this machine, measured beside the prediction. Returns (the
    report as text, whether it measured). Random weights: nothing is downloaded, and the memory
    of a step does not depend on the weights' values."""
    import tempfile

    from tuneplan.config import save_config
    from tuneplan.services import probing

    with tempfile.TemporaryDirectory(prefix="tuneplan-probe-") as tmp:
        path = Path(tmp) / "config.toml"
        save_config(config, path)
        args = ["--config", str(path), "--random-weights"]
        env = {} if gpu_index is None else {"CUDA_VISIBLE_DEVICES": str(gpu_index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        data, line = probing.run_probe_process(args, Path(tmp) / probing.PROBE_FILE, timeout=timeout, env=env)
    if data is None:
        return f"Probe failed: {line}", False
    return probing.report_from_dict(data).render(), True


def bundled_model_dir(*, build: bool = True) -> Path:
    """The bundled tiny model's folder (built once into the cache folder)."""
    from tuneplan.services.bundled import tiny_model_dir

    return tiny_model_dir(build=build)


__all__ = ["Prepared", "apply_settings", "assemble", "plan_config", "check_machine", "check_model_access",
           "for_this_machine", "prepare", "run_config", "check_tracker", "launch", "create_run", "start_run", "resume", "runs_root",
           "find_run", "newest_run", "request_save", "request_stop", "save_preset", "probe_config",
           "bundled_model_dir"]
