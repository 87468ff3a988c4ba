"""Planning a `RunRequest`: the one place its knobs become a plan request (the method, the GPU
knobs and the rest of the fixed knobs each go where the planning service takes them)."""

from __future__ import annotations

from typing import Any

from tuneplan.app.requests import RunRequest
from tuneplan.knobs import AUTO


def plan_request(request: RunRequest) -> Any:
    """The `tuneplan.services.planning.PlanRequest` of `request`."""
    from planner.solver import DatasetStats
    from tuneplan.services.planning import PlanRequest

    fixed = request.setup.fixed()
    method = fixed.pop("method", AUTO)
    gpus = fixed.pop("num_gpus", None)
    strategy = fixed.pop("strategy", AUTO)
    if strategy == "single":  # what the planner writes for one GPU (run configs hold it)
        strategy, gpus = AUTO, gpus or 1
    offload = fixed.pop("cpu_offload", False)
    if gpus is None and request.one_gpu:
        gpus = 1
    model, dataset, t = request.model, request.dataset, request.target
    return PlanRequest(
        model=model if isinstance(model, str) or model is None else None,
        resolved=None if isinstance(model, str) or model is None else model,
        gpu=t.gpu, vram_bytes=t.vram_bytes, gpu_index=t.index, hardware=t.hardware,
        method=method, fixed=fixed, effective_batch=request.effective_batch, epochs=request.epochs(),
        dataset=dataset if isinstance(dataset, DatasetStats) else None,
        dataset_source=dataset if isinstance(dataset, str) and dataset else None,
        prefer_accuracy=request.prefer_accuracy, safety_margin=request.safety_margin,
        price_per_hour=request.price_per_hour, min_seq_len=request.min_seq_len, max_seq_len=request.max_seq_len,
        token=request.token, gpus=gpus, strategy=strategy, cpu_offload=bool(offload),
        gpus_per_node=request.gpus_per_node, measured=request.measured,
        seq_len_max=request.setup.longest(), host_ram_bytes=request.host_ram_bytes,
    )


def plan(request: RunRequest, *, probe: Any = None) -> Any:
    """Resolve, validate and solve (`tuneplan.services.planning.plan`): a `PlanOutcome`.
    One-line UserError for bad input."""
    from tuneplan.services import planning

    return planning.plan(plan_request(request), probe=probe)


def find_measured(model_source: str | None, dataset_source: str | None) -> Any:
    """The newest finished bake-off (`tuneplan compare`) of this model and dataset under the runs
    root, or None (`tuneplan.services.planning.find_measured`; a plan never fails for it)."""
    from tuneplan.services.planning import PlanRequest
    from tuneplan.services.planning import find_measured as find

    return find(PlanRequest(model=model_source, dataset_source=dataset_source))


def estimate(spec: Any, hardware: Any, setup: Any, *, dataset_tokens: int | None = None) -> dict[str, Any]:
    """One configuration's memory, speed, time and cost (the wizard's edited knobs)."""
    from tuneplan.services import planning

    return planning.estimate(spec, hardware, setup, dataset_tokens=dataset_tokens)


def is_bundled_tiny(model: Any) -> bool:
    """Whether a resolved model is the bundled tiny one (random weights: full fine-tuning, the CPU)."""
    from tuneplan.services import planning

    return planning.is_bundled_tiny(model)
