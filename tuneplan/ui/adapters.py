"""Adapters from the real services to what the screens show (no textual here).

Each adapter wraps one real service module; boundaries (NVML, the Hub) are injected into
the services themselves, never replaced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneplan.errors import UserError


# -- models --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelChoice:
    """A resolved model: what the planner needs and what the screens show."""

    source: str
    """What goes into the run config's `model.source` (Hub id or local folder)."""
    name: str
    """Display name (catalog name, Hub id or folder name)."""
    spec: Any
    """`planner.spec.ModelSpec`."""
    parameters: int
    architecture: str
    """`config.json` `model_type`."""
    context_length: int
    license: str | None = None
    gated: bool | None = None
    """The Hub repo asks users to accept terms first (a token is needed to download)."""
    tokenizer_source: str | None = None
    """Where `tokenizer.json` can be had: a Hub id or a local folder (None: nowhere)."""
    kind: str = "catalog"
    """`catalog`, `hub` or `local`."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelHit:
    """One catalog search result."""

    name: str
    hub_id: str
    parameters: int | None
    gated: bool
    license: str


class ModelsAdapter:
    """Catalog search (pure) and model resolution through `tuneplan.services.models`."""

    def __init__(self, hub: Any = None) -> None:
        self.hub = hub
        """Hub boundary handed to the models service (None: the real Hub)."""

    def search(self, query: str, limit: int = 20) -> list[ModelHit]:
        from planner import catalog

        q = catalog.normalize(query)
        found = []
        for e in catalog.entries():
            keys = [catalog.normalize(k) for k in (e.name, e.hub_id, *e.aliases)]
            if not q or any(q in k for k in keys):
                found.append(e)
        if q and not found:
            found = [catalog.get(n) for n in catalog.suggestions(query, n=5)]
        hits = []
        for e in found[:limit]:
            try:
                params = e.official_parameters or e.spec().parameter_count()
            except Exception:
                params = None
            hits.append(ModelHit(e.name, e.hub_id, params, e.gated, e.license))
        return hits

    def resolve(self, text: str) -> ModelChoice:
        """Catalog name, Hub id or local folder -> ModelChoice. Blocking (may fetch
        `config.json` from the Hub): call it from a worker. Raises UserError."""
        from tuneplan.services import models

        kwargs = {"hub": self.hub} if self.hub is not None else {}
        resolved = models.resolve_model(text, **kwargs)
        return _choice_from_resolved(resolved)


def _choice_from_resolved(r: Any) -> ModelChoice:
    spec = r.spec
    return ModelChoice(
        source=getattr(r, "source", None) or getattr(r, "hub_id", None) or spec.name,
        name=getattr(r, "name", None) or spec.name,
        spec=spec,
        parameters=spec.parameter_count(),
        architecture=spec.model_type,
        context_length=spec.max_position_embeddings,
        license=getattr(r, "license", None),
        gated=getattr(r, "gated", None),
        tokenizer_source=getattr(r, "tokenizer_source", None) or getattr(r, "hub_id", None),
        kind=getattr(r, "kind", "catalog"),
        notes=tuple(getattr(r, "notes", ()) or ()),
    )


# -- planning ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alternative:
    """A runner-up configuration, as the alternatives table shows it."""

    setup: Any
    """`planner.setup.TrainSetup`."""
    device_bytes: int
    tokens_per_second: float | None
    fits: bool
    why: str = ""
    """What sets it apart (e.g. `no checkpointing`, `QLoRA`)."""


@dataclass(frozen=True)
class PlanView:
    """One estimate (solver choice or edited knobs) as the plan and review screens show it."""

    setup: Any
    """`planner.setup.TrainSetup` being shown."""
    memory: Any
    """`planner.setup.MemoryEstimate` (components and totals, bytes)."""
    fits: bool
    capacity_bytes: int
    """The card's memory (or the free memory of a detected card), in bytes."""
    usable_bytes: int
    """Capacity less the safety margin, in bytes: a plan fits when device_bytes <= this."""
    tokens_per_second: float | None
    time_seconds: float | None
    """Training time for the dataset's tokens x epochs (None without a dataset or speed)."""
    cost: float | None
    """USD at the card's hourly price (None when unknown)."""
    reasons: tuple[str, ...]
    alternatives: tuple[Alternative, ...]
    warnings: tuple[str, ...] = ()
    model: Any = None
    target: Any = None
    dataset: Any = None
    solver: bool = True
    """True for the solver's own choice, False after knobs were edited."""
    raw: Any = None
    """The planning service's own result (for `--json`-like detail)."""

    @property
    def over_bytes(self) -> int:
        return max(0, self.memory.device_bytes - self.capacity_bytes)
