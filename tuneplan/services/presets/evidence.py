"""A finished run's evidence (GPU, driver and library versions, measured peak, tokens/s),
recorded into a preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.gpus import match_nvml
from tuneplan.errors import UserError
from tuneplan.services.gpu import CPU_KEY as CPU
from tuneplan.services.presets.file_format import _METHOD, PresetEvidence
from tuneplan.services.presets.store import preset_from_run_config, user_dir, write_preset_text


def evidence_from_run(run_dir: Path) -> tuple[PresetEvidence, str | None]:
    """What a run measured, from its run folder; and the catalog key of its GPU (or `cpu`).

    Measured figures come from its events (`log`, `memory_probe`); the environment (GPU,
    driver, library versions) from an `environment` event when the run wrote one, else from
    this machine now (`environment_source = "saved"`)."""
    import statistics
    import time

    from tuneplan.events import (
        EnvironmentEvent, LogEvent, MemoryProbeEvent, effective_phase, read_events, read_status,
    )

    status = read_status(run_dir)
    events = list(read_events(run_dir))
    logs = [e for e in events if isinstance(e, LogEvent)]
    probes = [e for e in events if isinstance(e, MemoryProbeEvent)]
    env = next((e for e in reversed(events) if isinstance(e, EnvironmentEvent)), None)
    tps = [e.tokens_per_second for e in logs if e.tokens_per_second is not None]
    peaks = [p for p in [e.torch_peak_bytes for e in probes] + [e.torch_allocated_peak_bytes for e in logs]
             if p is not None]
    reserved = [p for p in [e.torch_reserved_bytes for e in probes] + [e.torch_reserved_peak_bytes for e in logs]
                if p is not None]
    predicted = next((e.predicted_device_bytes for e in probes if e.predicted_device_bytes), None)
    fields_: dict[str, Any] = dict(
        run=run_dir.name, recorded=time.strftime("%Y-%m-%d", time.gmtime()),
        outcome=effective_phase(status) if status else None, steps=status.step if status else None,
        final_loss=status.loss if status else None, peak_memory_bytes=max(peaks) if peaks else None,
        peak_reserved_bytes=max(reserved) if reserved else None, predicted_device_bytes=predicted,
        tokens_per_second=round(statistics.median(tps), 1) if tps else None,
    )
    if env is not None:
        source = "run"
        facts = env.to_dict()
        for k in ("gpu_name", "gpu_memory_bytes", "driver_version", "cuda_version", "torch_version",
                  "transformers_version", "peft_version", "trl_version", "bitsandbytes_version"):
            if facts.get(k) is not None:
                fields_[k] = facts[k]
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
