"""The application layer: the use cases both front ends share, between them and the services.

    from tuneplan import app
    outcome = app.plan(app.RunRequest(model="llama-3.1-8b", target=app.Target(gpu="rtx-3060-12gb")))
    prepared = app.prepare(request)                   # `tuneplan train`: planned, checked, adapted here
    run_dir, proc = app.launch(prepared.config, checked=True)
    app.find_run("llama-lora-1230"), app.resolve_model("qwen2.5-7b"), app.resolve_hardware(gpu="4090")

`tuneplan.commands` (the CLI) parses flags into a `RunRequest` and prints; `tuneplan.ui` (the
wizard) shows screens and calls these. Neither starts a run through the services directly
(import-linter: `commands | ui > app > services`). No textual, no torch; the service imports are
deferred, so importing this package stays cheap (`--help`).
"""

from __future__ import annotations

from tuneplan.app.planning import estimate, find_measured, is_bundled_tiny, plan, plan_request
from tuneplan.app.requests import RunRequest, Target
from tuneplan.app.resolving import (
    cpu_hardware, format_histogram, gpu_probe, looks_like_size, parse_size, preview_dataset, resolve_hardware,
    resolve_model, size_note,
)
from tuneplan.app.runs import (
    Prepared, apply_settings, assemble, bundled_model_dir, check_machine, check_model_access, check_tracker,
    create_run, find_run, for_this_machine, launch, newest_run, plan_config, prepare, probe_config, request_save, request_stop,
    resume, run_config, runs_root, save_preset, start_run,
)

__all__ = [
    "RunRequest", "Target", "plan", "plan_request", "estimate", "find_measured", "is_bundled_tiny", "resolve_model",
    "resolve_hardware", "cpu_hardware", "parse_size", "size_note", "looks_like_size", "Prepared", "apply_settings",
    "assemble", "plan_config", "check_machine", "check_model_access", "for_this_machine", "prepare", "run_config",
    "check_tracker", "launch", "create_run", "start_run", "resume", "runs_root", "find_run", "newest_run", "request_save", "request_stop",
    "save_preset", "probe_config", "bundled_model_dir", "preview_dataset", "format_histogram", "gpu_probe",
]
