"""Adapters from the application layer (`tuneplan.app`) to what the screens show (no textual here).

Each adapter turns the use cases the CLI shares into the screens' view objects; boundaries
(NVML, the Hub) are injected into the services themselves, never replaced here. Nothing here
imports `tuneplan.services`: starting a run is `tuneplan.app`'s, as for `tuneplan train`.
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
    resolved: Any = None
    """The models service's `ResolvedModel` (handed back to the planning service)."""


@dataclass(frozen=True)
class ModelHit:
    """One catalog search result."""

    name: str
    hub_id: str
    parameters: int | None
    gated: bool
    license: str


class ModelsAdapter:
    """Catalog search (pure) and model resolution through `tuneplan.app.resolve_model`."""

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
        from tuneplan.data import TINY_MODEL

        if not q or q in catalog.normalize(TINY_MODEL) or "tiny" in q:  # the bundled model, first
            from tuneplan.app import resolve_model

            hits.append(ModelHit(TINY_MODEL, "", resolve_model(TINY_MODEL).spec.parameter_count(), False,
                                 "bundled, random weights"))
        for e in found[:limit - len(hits)]:
            try:
                params = e.official_parameters or e.spec().parameter_count()
            except Exception:
                params = None
            hits.append(ModelHit(e.name, e.hub_id, params, e.gated, e.license))
        return hits

    def is_catalog_name(self, text: str) -> bool:
        """Whether `text` names a catalog entry exactly (name, alias or Hub id)."""
        from planner import catalog
        from tuneplan.data import TINY_MODEL

        return text.strip() == TINY_MODEL or catalog.find(text) is not None

    def resolve(self, text: str) -> ModelChoice:
        """Catalog name, Hub id or local folder -> ModelChoice. Blocking (may fetch
        `config.json` from the Hub): call it from a worker. Raises UserError."""
        from tuneplan import app

        resolved = app.resolve_model(text, hub=self.hub)
        choice = _choice_from_resolved(resolved)
        if resolved.kind == "bundled":  # its tokenizer lives in the built folder (built once, cached)
            from dataclasses import replace

            choice = replace(choice, tokenizer_source=str(app.bundled_model_dir(build=True)))
        return choice


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
        resolved=r,
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
    budget_bytes: int
    """Capacity less the safety margin, in bytes (the planner's `budget_bytes`): a plan fits when
    device_bytes <= this."""
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
    dataset_tokens: int | None = None
    """Tokens the time and cost are for (one epoch)."""
    tokens_assumed: bool = False
    """True when `dataset_tokens` is the solver's default, not the dataset's."""
    raw: Any = None
    """The planning service's own result (for `--json`-like detail)."""

    @property
    def over_bytes(self) -> int:
        return max(0, self.memory.device_bytes - self.capacity_bytes)


# -- runs ----------------------------------------------------------------------------------

class RunsAdapter:
    """Run configuration, launch and control through `tuneplan.app` (what `tuneplan train`,
    `attach`, `save` and `stop` use too)."""

    def __init__(self, runs_root: Path | None = None) -> None:
        self.runs_root = runs_root

    def root(self) -> Path:
        from tuneplan.app import runs_root

        return runs_root(self.runs_root)

    def build_config(self, plan: PlanView, dataset: Any, *, on_cpu: bool = False, **training: Any) -> Any:
        """The run configuration for `plan`, with the hyperparameters `training` (`TrainingConfig`
        field -> value; None: the default). `on_cpu`: it launches on this machine, which has
        no NVIDIA GPU, so the launch rule of `tuneplan train` applies (float32 on the CPU:
        `tuneplan.app.for_this_machine`). Without it: the configuration for the plan's target."""
        from tuneplan import app

        settings = {f"training.{k}": v for k, v in training.items() if v is not None}
        setup = app.for_this_machine(plan.setup, 0)[0] if on_cpu else plan.setup
        config = app.run_config(plan.model.source, dataset.source if dataset is not None else "", setup, settings,
                                prediction=plan.memory)
        if dataset is None:
            raise UserError("no dataset chosen: go back (Esc) to the dataset step to launch a run")
        app.check_tracker(config.training.report_to)  # said on the screen, before a launch is tried
        return config.validate()

    def read_eval(self, run_dir: Path) -> Any:
        """The run's `tuneplan eval` report (`RUN/eval.json`), or None."""
        from tuneplan.services.eval_results import read_eval

        return read_eval(run_dir)

    def start_eval(self, run_dir: Path, *, force: bool = False) -> Any:
        """`tuneplan eval RUN` in its own process (`Popen`); output in `RUN/eval.log`."""
        from tuneplan.services.eval_results import start_eval

        return start_eval(run_dir, force=force)

    def eval_error(self, run_dir: Path) -> str | None:
        from tuneplan.services.eval_results import eval_error

        return eval_error(run_dir)

    def config_text(self, config: Any) -> str:
        from tuneplan.config import dump_config

        return dump_config(config)

    def train_command(self, config: Any, target: Any = None) -> str:
        """The `tuneplan train` command line that launches the same run
        (`tuneplan.services.command_line`, the builder `tuneplan plan` uses too). `target`: a
        dry-run target adds `--gpu KEY` / `--vram SIZE`, so `train` checks it runs there."""
        from tuneplan.services.command_line import train_command

        return train_command(config, target_flags(target))

    def compare_argv(self, config: Any, target: Any = None) -> list[str]:
        """`tuneplan compare` arguments for the bake-off of this configuration's model and
        dataset (its trial length when max steps is set, its learning rate and seed).
        `target`: a dry-run target adds `--gpu KEY` / `--vram SIZE`, as for `train_command`."""
        t = config.training
        argv = ["--model", config.model.source, "--dataset", config.data.source]
        if t.max_steps is not None:
            argv += ["--max-steps", str(t.max_steps)]
        argv += ["--lr", f"{t.learning_rate:g}", "--seed", str(t.seed)]
        return argv + target_flags(target)

    def compare_command(self, config: Any, target: Any = None) -> str:
        """The `tuneplan compare` command line of `compare_argv`."""
        import shlex

        return " ".join(shlex.quote(p) for p in ["tuneplan", "compare", *self.compare_argv(config, target)])

    def start_compare(self, config: Any) -> tuple[int, Path]:
        """Start the bake-off on this machine as a detached job (`tuneplan.services.compare`):
        (its pid, its log). It plans for the GPUs here (the CPU for the tiny model), as a launch does."""
        from tuneplan.services import compare

        return compare.start_detached(self.compare_argv(config), self.root())

    def save_preset(self, config: Any, name: str, *, gpu: str | None = None) -> Path:
        """Save the configuration as a user preset through the presets service (never over
        an existing one). `gpu`: the catalog key the plan was made for."""
        from tuneplan.app import save_preset

        return save_preset(config, name, "saved from the tuneplan wizard", gpu=gpu)

    def probe(self, config: Any, gpu_index: int | None = None, *, timeout: float = 900.0) -> tuple[str, bool]:
        """`tuneplan probe --config ... --random-weights` in its own process (blocking: call it
        from a worker): a few optimizer steps of `config` on this machine, measured beside the
        prediction. Returns (the report as text, whether it measured)."""
        from tuneplan.app import probe_config

        return probe_config(config, gpu_index, timeout=timeout)

    def launch(self, config: Any, gpu_index: int | None = None) -> Path:
        """Start the run detached. `gpu_index` (NVML numbering) pins the run to that GPU: the
        child inherits CUDA_VISIBLE_DEVICES with CUDA ordering by PCI bus, as NVML orders."""
        from tuneplan.app import launch

        return launch(config, runs_root=self.root(), gpu_index=gpu_index)[0]

    def newest(self) -> Path | None:
        from tuneplan.app import newest_run

        return newest_run(self.root())

    def find(self, name: str) -> Path:
        from tuneplan.app import find_run

        return find_run(name, self.root())

    def request_save(self, run_dir: Path) -> None:
        from tuneplan.app import request_save

        request_save(run_dir)

    def request_stop(self, run_dir: Path) -> None:
        from tuneplan.app import request_stop

        request_stop(run_dir)


def target_flags(target: Any) -> list[str]:
    """`--gpu KEY` (a catalog card) or `--vram SIZE` (a size) for a dry-run target; nothing
    for a GPU found here (train plans for and checks the GPUs NVML finds)."""
    if target is None or not getattr(target, "dry_run", False):
        return []
    gpu = target.gpu
    if gpu.key.startswith("custom"):
        from planner.gpus import GiB

        return ["--vram", f"{gpu.memory_bytes / GiB:g}GiB"]
    return ["--gpu", gpu.key]


# -- planning ------------------------------------------------------------------------------

def dataset_tokens(dataset: Any, seq_len: int) -> int | None:
    """Tokens one epoch trains: each sample capped at `seq_len`, scaled from the measured
    samples to the whole dataset (histogram bins give lengths to within a bin)."""
    stats = getattr(dataset, "tokens", None)
    if stats is None or not stats.count:
        return None
    capped = sum(min((lo + hi - 1) / 2, seq_len) * n for lo, hi, n in stats.histogram)
    scale = (dataset.num_examples or stats.count) / stats.count
    return int(capped * scale)


def _dataset_stats(dataset: Any) -> Any:
    from planner.solver import DatasetStats

    stats = getattr(dataset, "tokens", None)
    if stats is None:
        return None
    scale = (dataset.num_examples or stats.count) / stats.count
    return DatasetStats(num_examples=dataset.num_examples, total_tokens=int(stats.total_tokens * scale),
                        p50_tokens=stats.p50, p99_tokens=stats.p99, max_tokens=stats.max)


def _difference(alt: Any, choice: Any) -> str:
    """What sets an alternative apart from the choice, in a few words."""
    names = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}
    out = []
    if alt.method != choice.method:
        out.append(names.get(alt.method, alt.method))
    if alt.grad_checkpointing != choice.grad_checkpointing:
        out.append("ckpt " + ("on" if alt.grad_checkpointing else "off"))
    if alt.seq_len != choice.seq_len:
        out.append(f"seq {alt.seq_len}")
    if (alt.micro_batch, alt.grad_accum) != (choice.micro_batch, choice.grad_accum):
        out.append(f"batch {alt.micro_batch}x{alt.grad_accum}")
    if alt.optimizer != choice.optimizer:
        out.append(alt.optimizer)
    if alt.lora_rank != choice.lora_rank:
        out.append(f"r{alt.lora_rank}")
    return ", ".join(out[:2]) or "same knobs"


class PlanningAdapter:
    """The solver and single estimates through `tuneplan.app` (what `tuneplan plan` uses)."""

    def hardware(self, target: Any) -> Any:
        from planner.solver import Hardware

        source = "cpu" if target.gpu.is_cpu() else "catalog" if target.dry_run else "nvml"
        return Hardware(gpu=target.gpu, count=target.count, free_bytes=target.free_bytes, source=source)

    def plan(self, model: ModelChoice, target: Any, dataset: Any, fixed: Any) -> PlanView:
        """The solver's choice with the knobs the user edited kept (`fixed`: a
        `tuneplan.knobs.PartialSetup`, or its knob -> value mapping), blocking for tens of ms:
        call it from a worker."""
        from tuneplan import app
        from tuneplan.knobs import PartialSetup

        given = fixed if isinstance(fixed, PartialSetup) else PartialSetup(dict(fixed))
        # The wizard plans for the one card chosen (more GPUs appear as suggestions only).
        # a bake-off of this model and dataset (`tuneplan compare`) is weighed and explained
        measured = app.find_measured(model.source, getattr(dataset, "source", None))
        request = app.RunRequest(model=model.resolved, dataset=_dataset_stats(dataset), setup=given,
                                 target=app.Target(hardware=self.hardware(target)), one_gpu=True, measured=measured)
        outcome = app.plan(request)
        r = outcome.result
        c = r.choice
        warnings = list(r.warnings) + list(outcome.notes)
        if r.dataset_tokens_assumed:
            warnings.append(f"time and cost assume {r.dataset_tokens / 1e6:.0f}M tokens (no dataset statistics)")
        alternatives = tuple(
            Alternative(setup=a.setup, device_bytes=a.memory.device_bytes,
                        tokens_per_second=a.throughput.tokens_per_second, fits=a.fits,
                        why=_difference(a.setup, c.setup))
            for a in r.alternatives)
        return PlanView(setup=c.setup, memory=c.memory, fits=r.fits, capacity_bytes=r.usable_bytes,
                        budget_bytes=r.budget_bytes, tokens_per_second=c.throughput.tokens_per_second,
                        time_seconds=r.seconds, cost=r.cost, reasons=tuple(r.reasons) + tuple(r.suggestions),
                        alternatives=alternatives, warnings=tuple(warnings), model=model, target=target,
                        dataset=dataset, solver=True, raw=outcome, dataset_tokens=r.dataset_tokens,
                        tokens_assumed=r.dataset_tokens_assumed)

    def estimate(self, model: ModelChoice, target: Any, dataset: Any, setup: Any) -> PlanView:
        """One configuration's memory, speed, time and cost (well under a millisecond).
        Without dataset statistics time and cost assume the solver's default token count,
        so an edited plan compares with the solver's."""
        from planner.solver import DEFAULT_DATASET_TOKENS
        from tuneplan import app

        hw = self.hardware(target)
        tokens = dataset_tokens(dataset, setup.seq_len)
        warnings = []
        assumed = tokens is None
        if tokens is None:
            tokens = DEFAULT_DATASET_TOKENS
            warnings.append(f"time and cost assume {tokens / 1e6:.0f}M tokens (no dataset statistics)")
        e = app.estimate(model.spec, hw, setup, dataset_tokens=tokens)
        memory = e["memory"]
        if setup.seq_len > model.context_length:
            warnings.append(f"sequence length {setup.seq_len} is beyond the model's context {model.context_length}")
        return PlanView(setup=setup, memory=memory, fits=e["fits"], capacity_bytes=e["usable_bytes"],
                        budget_bytes=e["budget_bytes"], tokens_per_second=e["throughput"].tokens_per_second,
                        time_seconds=e["seconds"], cost=e["cost"], reasons=tuple(memory.notes), alternatives=(),
                        warnings=tuple(warnings), model=model, target=target, dataset=dataset, solver=False,
                        raw=e, dataset_tokens=tokens, tokens_assumed=assumed)
