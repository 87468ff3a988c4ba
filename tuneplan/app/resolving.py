"""Resolving what the user named: a model reference and the hardware to plan for, each with its
own arguments (no plan request to build first), and the memory-size reader every front end
shares."""

from __future__ import annotations

from typing import Any


def resolve_model(ref: str, *, token: str | None = None, hub: Any = None) -> Any:
    """Catalog name, Hub id, local folder or `tuneplan:tiny` -> `ResolvedModel` (may fetch
    `config.json` from the Hub: blocking). One-line UserError otherwise."""
    from tuneplan.services.models import resolve_model as resolve

    return resolve(ref, token=token, **({"hub": hub} if hub is not None else {}))


def resolve_hardware(gpu: str | None = None, vram: int | None = None, index: int | None = None, *,
                     gpus: int | None = None, bf16: bool = True, probe: Any = None) -> tuple[Any, list[str], int]:
    """(the `planner.solver.Hardware` to plan for, notes about it, GPUs NVML found): a catalog card
    (`gpu`), a memory size in bytes (`vram`; with `gpu`: free on it), or the GPUs NVML finds
    (`index`: that one). See `tuneplan.services.planning.resolve_hardware`."""
    from tuneplan.services.planning import resolve_hardware as resolve

    return resolve(gpu, vram, index, gpus=gpus, bf16=bf16, probe=probe)


def cpu_hardware() -> Any:
    """This machine's CPU and RAM as planning hardware (the bundled tiny model trains there)."""
    from tuneplan.services.gpu import cpu_hardware as cpu

    return cpu()


def parse_size(text: str, what: str = "--vram") -> int:
    """`24GiB`, `24GB`, `24576MiB` -> bytes (GPU makers' GB read as GiB); one-line UserError."""
    from tuneplan.services.planning import parse_size as parse

    return parse(text, what)


def size_note(text: str, what: str = "--vram") -> str | None:
    """How a decimal-looking unit (`24GB`) was read, or None."""
    from tuneplan.services.planning import size_note as note

    return note(text, what)


def looks_like_size(text: str) -> bool:
    from tuneplan.services.planning import looks_like_size as looks

    return looks(text)


def preview_dataset(source: str, *, model_source: str | None = None, hub: Any = None) -> Any:
    """A dataset's format, samples and token statistics (`tuneplan.services.dataset_preview`;
    measured with the tokenizer of `model_source` where obtainable). Blocking."""
    from tuneplan.services.dataset_preview import preview_dataset as preview

    return preview(source, model_source=model_source, hub=hub)


def format_histogram(*args: Any, **kwargs: Any) -> Any:
    """The token-length histogram as text lines (`tuneplan.services.dataset_preview`)."""
    from tuneplan.services.dataset_preview import format_histogram as fmt

    return fmt(*args, **kwargs)


def gpu_probe() -> Any:
    """This machine's GPU probe (NVML inside; degrades to "not available", never raises)."""
    from tuneplan.services.gpu import default_probe

    return default_probe()
