"""The hardware target the wizard plans for (no textual here)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.gpus import GPU, GPUS, GiB, UnknownGPU, get_gpu, suggest_gpus

from tuneplan.errors import UserError


@dataclass(frozen=True)
class Target:
    """One GPU to plan for: a detected card or, in dry-run mode, a catalog card or a size."""

    gpu: GPU
    """Planner GPU record (memory in bytes, bf16, speed and price when known)."""
    label: str
    """What the screens call it, e.g. `NVIDIA GeForce RTX 3060 12GB (dry run)`."""
    free_bytes: int | None = None
    """Memory free right now on a detected card, in bytes (None in dry-run mode)."""
    dry_run: bool = False
    index: int | None = None
    """NVML index of a detected card (for the dashboard's sampling)."""
    count: int = 1


def parse_memory(text: str) -> int | None:
    """`12`, `12GB`, `11.5 GiB`, `24576MiB` -> bytes, with the planner's size rules
    (`tuneplan.app.parse_size`: GPU makers' GB read as GiB). None when `text` is
    not shaped like a size: a bare number over 512 is a card name (`3060`, `4090`). A size that
    is not > 0 (`0GiB`) raises a one-line UserError: it is never taken for a card."""
    from tuneplan.app import looks_like_size, parse_size

    if not looks_like_size(text):
        return None
    if text.strip().replace(".", "", 1).isdigit() and float(text) > 512:
        return None
    return parse_size(text, "memory size")


def catalog_matches(query: str, limit: int = 8) -> list[GPU]:
    """Catalog cards for a search box: substring of key/name/alias first, then close names."""
    q = query.strip().lower()
    if not q:
        return list(GPUS)
    flat = q.replace(" ", "").replace("-", "")
    hits = [g for g in GPUS if flat in (g.key + g.name + "".join(g.aliases)).lower().replace(" ", "").replace("-", "")]
    if hits:
        return hits[:limit]
    for key in suggest_gpus(query, n=limit):
        g = next(c for c in GPUS if c.key == key)
        if g not in hits:
            hits.append(g)
    return hits[:limit]


def dry_run_target(text: str) -> Target:
    """A catalog card (`3060`, `a100-80`) or a memory size (`12GiB`) as a dry-run target."""
    size = parse_memory(text)
    if size is not None:
        # A size alone says nothing of speed: no TFLOP/s, so no time or cost; bf16 assumed.
        gpu = GPU(key=f"custom-{size // 1024**2}mib", name=f"a {size / GiB:.1f} GiB card",
                  memory_bytes=size, bf16=True, arch="ampere")
        return Target(gpu=gpu, label=f"{gpu.name} (dry run)", dry_run=True)
    try:
        gpu = get_gpu(text)
    except UnknownGPU as exc:
        hint = f"did you mean {', '.join(exc.suggestions)}? " if exc.suggestions else ""
        raise UserError(f"unknown GPU '{text}': {hint}or type a memory size like 24GiB") from None
    return Target(gpu=gpu, label=f"{gpu.name} (dry run)", dry_run=True)


def cpu_target() -> Target:
    """This machine's CPU as the target, on a machine without an NVIDIA GPU: the planner plans
    for its available RAM in float32 (`planner.gpus.CPU_COMPUTE_DTYPE`), as `tuneplan train`
    and `plan --preset` do there (`tuneplan.services.gpu.cpu_hardware`). Not a dry run: a
    launch trains here."""
    from tuneplan.app import cpu_hardware

    hw = cpu_hardware()
    return Target(gpu=hw.gpu, label=hw.gpu.name, free_bytes=hw.free_bytes)
