"""The solver: the fastest training configuration that fits the GPU, and why.

`solve(spec, hardware, constraints, dataset_stats=None) -> PlanResult`

What it searches (everything the user did not fix):
- method: LoRA and QLoRA (`auto`), plus full fine-tuning when accuracy matters most;
- gradient checkpointing off / on;
- micro-batch over the divisors of the target effective batch, gradient accumulation
  = effective batch / micro-batch, so the optimizer sees the same batch whatever fits;
- optimizer: torch AdamW, and 8-bit paged AdamW only where AdamW's states do not fit
  (or for full fine-tuning, where they are large);
- loss: the fused (chunked) linear cross-entropy of our training path by default (same
  loss, no full logits); transformers' loss only when fixed by the user.
The sequence length is not searched: it comes from the user, the dataset (p99 of the token
lengths, rounded up), or 2048, never above the model's context; unless the user asks for the
longest that fits (`Constraints.seq_len_max`, `--seq-len max`): then it is the longest multiple
of SEQ_ROUND tokens whose least-memory configuration fits (bisection), reported with a warning
when it passes the model's context (RoPE scaling).

The long-context path (docs/long-context.md), tried only when nothing fits without it, cheapest
first: (1) attention linear in the sequence (SDPA with padding-free packing builds a quadratic
block mask: rows unpacked at micro-batch 1 instead, or flash when asked); (2) tiled MLP and/or
checkpointed layer inputs offloaded to pinned host RAM, whichever is fastest; (3) LoRA dropout
0 (dropout copies each adapted layer's input). A plan whose offloaded activations exceed the
host RAM the caller gives (`Constraints.host_ram_bytes`) does not fit.

How it picks, among configurations whose `device_bytes` fit the usable memory less the
safety margin: LoRA over QLoRA when both fit (a 16-bit base is faster and has no
quantization error) unless QLoRA was asked for; full fine-tuning first only with
`prefer_accuracy`; no checkpointing when it fits, unless checkpointing lets a bigger
micro-batch run clearly faster (CKPT_SPEEDUP_TO_SWITCH); then the highest estimated
tokens/s. Memory grows monotonically with the micro-batch, so each group is a binary search:
a full 70B search takes a few dozen estimates.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from planner.bakeoff import BakeoffResult
from planner.gpus import CPU_COMPUTE_DTYPE, GPU, bigger_cards
from planner.gpus import format_gib as _gib
from planner.margins import DEFAULT_SAFETY_MARGIN, margin_sentence  # derived from the model's measured error
from planner.parallel import estimate_parallel_memory
from planner.setup import MemoryEstimate, TrainSetup
from planner.spec import ModelSpec
from planner.throughput import Throughput, estimate_throughput, trainable_parameters, training_cost, training_seconds

DEFAULT_SEQ_LEN = 2048
DEFAULT_EFFECTIVE_BATCH = 16
DEFAULT_DATASET_TOKENS = 10_000_000
"""Tokens per epoch assumed for time and cost when no dataset is given (a ~10k-example
instruction set of ~1k tokens each); the plan says it assumed this."""
CKPT_SPEEDUP_TO_SWITCH = 1.15
"""Checkpointing is chosen over a configuration without it only when it is this much faster."""
SEQ_ROUND = 128
MAX_MICRO_BATCH = 64
MAX_SEQ_SEARCH = 1 << 24
"""Longest sequence `--seq-len max` tries (16M tokens)."""

_METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}


@dataclass(frozen=True)
class Hardware:
    """The GPU(s) to plan for."""

    gpu: GPU
    """Catalog entry (or a generic record for `--vram` / unknown cards)."""
    count: int = 1
    """GPUs of this kind available (NVML: found in the box; catalog/--vram: 1, the solver may
    propose more when one does not hold the model and the GPU count is left to it)."""
    free_bytes: int | None = None
    """Memory free on the card right now (NVML), in bytes; None: the whole card is free."""
    source: str = "catalog"
    """`catalog`, `nvml` or `vram`: where the figures came from."""

    def usable_bytes(self) -> int:
        """Memory a new training process can use, in bytes."""
        if self.free_bytes is None:
            return self.gpu.memory_bytes
        return min(self.free_bytes, self.gpu.memory_bytes)


@dataclass(frozen=True)
class DatasetStats:
    """Token statistics of the training set (after the chat template)."""

    num_examples: int | None = None
    total_tokens: int | None = None
    """Tokens in one epoch."""
    p50_tokens: int | None = None
    p99_tokens: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Constraints:
    """What the user asked for; knobs in `fixed` are never changed by the solver."""

    method: str = "auto"
    """`auto` (LoRA or QLoRA), `lora`, `qlora` or `full`."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """TrainSetup field -> value the user fixed (e.g. {"micro_batch": 2, "lora_rank": 64})."""
    min_seq_len: int | None = None
    """Shortest sequence length the user accepts when suggesting shorter ones."""
    max_seq_len: int | None = None
    """Cap on the sequence length taken from the dataset."""
    effective_batch: int = DEFAULT_EFFECTIVE_BATCH
    """Sequences per optimizer step, kept constant while micro-batch and accumulation trade."""
    epochs: float = 1.0
    prefer_accuracy: bool = False
    """Full fine-tuning first when it fits, 16-bit optimizer states, no truncation (max length)."""
    safety_margin: float = DEFAULT_SAFETY_MARGIN
    """Fraction of usable memory kept free (allocator spikes, other processes)."""
    price_per_hour: float | None = None
    """USD per GPU-hour; None: the catalog price."""
    gpus: int | None = None
    """GPUs to train on; None: the solver chooses (see `solve`). Same as fixing `num_gpus`."""
    strategy: str = "auto"
    """`auto`, `ddp` or `fsdp` for several GPUs (`single` for one); same as fixing `strategy`."""
    cpu_offload: bool = False
    """FSDP CPU offload of sharded weights, gradients and optimizer states."""
    max_gpus: int | None = None
    """Most GPUs the solver may propose when the count is left to it (None: the GPUs NVML
    found; for a catalog card one, with more GPUs named in the suggestions only)."""
    gpus_per_node: int = 8
    """GPUs per machine: a plan with more GPUs spans ceil(gpus / gpus_per_node) machines."""
    measured: BakeoffResult | None = None
    """A bake-off's measured quality for this model and dataset (`tuneplan compare`): it orders
    the methods when `method` is `auto` and the reasons say what it measured."""
    inter_node_gbs: float | None = None
    """Network between machines in GB/s per direction (None: 100 Gb/s Ethernet)."""
    seq_len_max: bool = False
    """Search the longest sequence that fits (`--seq-len max`), the other knobs held."""
    host_ram_bytes: int | None = None
    """Host RAM the offloaded activations may use, in bytes (the caller measures it: psutil in
    tuneplan.services); None: unknown, not checked (the plan states the need)."""


MAX_AUTO_GPUS = 64
"""Most GPUs an automatic count proposes for a catalog card (8 machines of 8)."""
AUTO_GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Candidate:
    """One evaluated configuration."""

    setup: TrainSetup
    memory: MemoryEstimate
    throughput: Throughput
    fits: bool

    def tokens_per_second(self) -> float:
        return self.throughput.tokens_per_second or 0.0

    def host_bytes(self) -> int:
        """Host RAM of the long-context path, in bytes (`MemoryEstimate.host_bytes`: offloaded
        activations, host-resident embedding; 0 without them)."""
        return self.memory.host_bytes()

    def describe(self) -> str:
        """One line: `QLoRA r16, seq 2048, micro-batch 2 x 8, checkpointing, adamw`."""
        s = self.setup
        parts = [_METHOD_NAMES[s.method] + (f" r{s.lora_rank}" if s.method != "full" else ""),
                 f"seq {s.seq_len}", f"micro-batch {s.micro_batch} x {s.grad_accum}",
                 "checkpointing" if s.grad_checkpointing else "no checkpointing", s.optimizer]
        if not s.fused_ce:
            parts.append("unfused loss")
        if s.offload_activations:
            parts.append("offloaded activations")
        if s.tiled_mlp:
            parts.append("tiled MLP")
        if s.chunked_norm:
            parts.append("chunked norm")
        if s.offload_embedding:
            parts.append("host embedding")
        if s.num_gpus > 1 or s.strategy == "fsdp":
            parts.insert(0, f"{s.num_gpus} GPU{'s' if s.num_gpus > 1 else ''} {s.strategy.upper()}")
        return ", ".join(parts)


@dataclass(frozen=True)
class PlanResult:
    """The solver's answer."""

    fits: bool
    choice: Candidate
    """The chosen configuration; when nothing fits, the smallest one tried (fits=False)."""
    alternatives: tuple[Candidate, ...]
    """The best few other configurations that fit, fastest first."""
    reasons: tuple[str, ...]
    """Plain sentences: why this choice."""
    warnings: tuple[str, ...]
    """Things the user asked for that were changed or are risky (bf16 fallback, context)."""
    suggestions: tuple[str, ...]
    """When nothing fits: what would make it fit."""
    usable_bytes: int
    budget_bytes: int
    """usable_bytes less the safety margin: what `device_bytes` must stay under."""
    hardware: Hardware
    dataset_tokens: int
    dataset_tokens_assumed: bool
    epochs: float
    seconds: float | None
    """Training time for dataset_tokens x epochs."""
    cost: float | None
    """USD for that time at price_per_hour."""
    price_per_hour: float | None
    evaluated: int
    """Memory estimates the search made."""
    nodes: int = 1
    """Machines the plan spans (num_gpus / gpus_per_node, rounded up)."""
    cpu_offload: bool = False
    """FSDP CPU offload on."""
    single_gpu_need_bytes: int | None = None
    """When the plan uses several GPUs because one cannot hold it: what the smallest
    one-GPU configuration needs (device bytes)."""
    host_ram_bytes: int | None = None
    """Host RAM the offloaded activations were checked against (None: unknown)."""
    host_ram_short_bytes: int | None = None
    """When only the host RAM kept a configuration from fitting: the host bytes it needs
    (`MemoryEstimate.host_bytes`)."""

    def headroom_bytes(self) -> int:
        """Usable memory left beside the chosen configuration's device_bytes (may be < 0)."""
        return self.usable_bytes - self.choice.memory.device_bytes


class _Search:
    def __init__(self, spec: ModelSpec, gpu: GPU, budget: int, *, cpu_offload: bool = False, nodes: int = 1,
                 inter_node_gbs: float | None = None, host_ram: int | None = None):
        self.spec, self.gpu, self.budget = spec, gpu, budget
        self.cpu_offload, self.nodes, self.inter_node_gbs = cpu_offload, nodes, inter_node_gbs
        self.host_ram = host_ram
        self.cache: dict[TrainSetup, Candidate] = {}

    def memory(self, setup: TrainSetup) -> MemoryEstimate:
        offload = (self.cpu_offload or setup.cpu_offload) and setup.strategy == "fsdp"
        return estimate_parallel_memory(self.spec, setup, self.gpu, cpu_offload=offload)

    def fits_memory(self, mem: MemoryEstimate) -> bool:
        """The card's budget, and the host RAM for offloaded activations when it is known."""
        host = mem.host_bytes()
        return mem.device_bytes <= self.budget and (self.host_ram is None or host <= self.host_ram)

    def host_short(self, seq_len: int) -> Candidate | None:
        """Of the configurations of `seq_len` tried that fit the card but not the host RAM, the
        one that needs the least host RAM (None: the host RAM kept none of them out)."""
        short = [c for c in self.cache.values() if not c.fits and c.setup.seq_len == seq_len
                 and c.memory.device_bytes <= self.budget]
        return min(short, key=lambda c: c.host_bytes()) if short else None

    def eval(self, setup: TrainSetup) -> Candidate:
        c = self.cache.get(setup)
        if c is None:
            offload = (self.cpu_offload or setup.cpu_offload) and setup.strategy == "fsdp"
            mem = self.memory(setup)
            thr = estimate_throughput(self.spec, setup, self.gpu, nodes=self.nodes,
                                      inter_node_gbs=self.inter_node_gbs, cpu_offload=offload)
            c = Candidate(setup, mem, thr, self.fits_memory(mem))
            self.cache[setup] = c
        return c

    def largest_fitting(self, base: TrainSetup, micro_batches: list[int], effective: int | None,
                        grad_accum: int | None) -> list[Candidate]:
        """Binary search the biggest fitting micro-batch; returns the fitting candidates seen."""
        def mk(mb: int) -> TrainSetup:
            if grad_accum is not None:
                return replace(base, micro_batch=mb, grad_accum=grad_accum)
            assert effective is not None, "callers give an effective batch or a fixed accumulation"
            ga = max(1, effective // mb)
            return replace(base, micro_batch=mb, grad_accum=ga)

        lo, hi = 0, len(micro_batches) - 1
        fitting: list[Candidate] = []
        first = self.eval(mk(micro_batches[0]))
        if not first.fits:
            return []
        fitting.append(first)
        lo = 1
        while lo <= hi:
            mid = (lo + hi) // 2
            c = self.eval(mk(micro_batches[mid]))
            if c.fits:
                fitting.append(c)
                lo = mid + 1
            else:
                hi = mid - 1
        # No need to look below the biggest fitting micro-batch: at a constant effective batch,
        # estimated tokens/s never falls as the micro-batch grows (bigger GEMMs, launches and
        # weight reads amortised over more tokens, the same optimizer steps).
        return fitting


def _divisors(n: int, cap: int) -> list[int]:
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


def _round_up(n: int, to: int) -> int:
    return max(to, int(math.ceil(n / to)) * to)


def choose_seq_len(spec: ModelSpec, constraints: Constraints, stats: DatasetStats | None,
                   warnings: list[str], reasons: list[str]) -> int:
    """The sequence length to plan with (see the module docstring)."""
    context = spec.max_position_embeddings
    fixed = constraints.fixed.get("seq_len")
    if fixed is not None:
        if fixed > context:
            # asked for by name (or by `--seq-len max`'s printed command): planned and trained as asked,
            # as `--seq-len max` reports lengths past the context; a length from the data is capped below
            warnings.append(f"sequence length {fixed} is beyond {spec.name}'s context of {context} tokens; "
                            f"planned as asked. {_rope_sentence(spec)}")
            return int(fixed)
        if stats is not None and stats.p99_tokens and stats.p99_tokens > fixed:
            warnings.append(f"sequence length {fixed} is below the dataset's 99th-percentile example "
                            f"({stats.p99_tokens} tokens): more than 1% of the examples will be truncated.")
        return int(fixed)
    if stats is not None and (stats.p99_tokens or stats.max_tokens):
        basis = stats.max_tokens if (constraints.prefer_accuracy and stats.max_tokens) else (stats.p99_tokens or stats.max_tokens)
        assert basis is not None  # one of the two is set (the test above)
        seq = _round_up(int(basis), SEQ_ROUND)
        what = "longest example" if basis == stats.max_tokens and constraints.prefer_accuracy else "99th-percentile example"
        reasons.append(f"Sequence length {seq}: the dataset's {what} is {basis} tokens (rounded up to a multiple of {SEQ_ROUND}).")
    else:
        seq = DEFAULT_SEQ_LEN
        reasons.append(f"Sequence length {seq}: the default (no example lengths given).")
    if constraints.max_seq_len is not None and seq > constraints.max_seq_len:
        seq = constraints.max_seq_len
        reasons.append(f"Capped at the maximum sequence length asked for ({seq}).")
    if constraints.min_seq_len is not None and seq < constraints.min_seq_len:
        seq = constraints.min_seq_len
    if seq > context:
        warnings.append(f"sequence length {seq} is beyond {spec.name}'s context of {context} tokens; planning with {context}.")
        seq = context
    return seq


def _rope_sentence(spec: ModelSpec) -> str:
    return (f"Positions past {spec.max_position_embeddings} (max_position_embeddings) need RoPE scaling: "
            "set `rope_scaling` in the model's config.json (e.g. YaRN or a larger factor) before training "
            "on them.")


def _methods(constraints: Constraints) -> list[str]:
    if constraints.method != "auto":
        return [constraints.method]
    order = ["full", "lora", "qlora"] if constraints.prefer_accuracy else ["lora", "qlora"]
    if constraints.measured is not None:  # a bake-off's measured quality (planner/bakeoff.py)
        order = constraints.measured.method_order(order)
    return order


def _solve_count(spec: ModelSpec, hardware: Hardware, constraints: Constraints,
                 dataset_stats: DatasetStats | None, n: int, strategy: str) -> PlanResult:
    """The fastest configuration on exactly `n` GPUs with `strategy` (per-GPU budget)."""
    fixed = dict(constraints.fixed)
    fixed.pop("num_gpus", None)
    fixed.pop("strategy", None)
    nodes = -(-n // max(1, constraints.gpus_per_node))
    if constraints.method not in ("auto", "lora", "qlora", "full"):
        raise ValueError(f"method must be auto, lora, qlora or full (got {constraints.method!r})")
    if not 0 <= constraints.safety_margin < 0.9:
        raise ValueError(f"safety_margin must be in [0, 0.9) (got {constraints.safety_margin})")
    if constraints.effective_batch <= 0:
        raise ValueError(f"effective_batch must be > 0 (got {constraints.effective_batch})")
    unknown = set(fixed) - set(TrainSetup.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown setup knob(s): {', '.join(sorted(unknown))}")
    gpu = hardware.gpu
    reasons: list[str] = []
    warnings: list[str] = []

    # -- precision and kernels the card supports ---------------------------------------------
    dtype = fixed.pop("compute_dtype", None)
    if gpu.is_cpu():
        # the one CPU rule, shared with the launch (tuneplan/services/machine.py)
        if dtype not in (None, CPU_COMPUTE_DTYPE):
            warnings.append(f"{gpu.name} trains in {CPU_COMPUTE_DTYPE}, not {dtype} (no fast 16-bit training "
                            "on the CPU).")
        else:
            reasons.append(f"{gpu.name}: training computes in {CPU_COMPUTE_DTYPE} (no fast 16-bit training "
                           "on the CPU).")
        dtype = CPU_COMPUTE_DTYPE
    elif dtype is None:
        dtype = "bfloat16" if gpu.bf16 else "float16"
        if not gpu.bf16:
            reasons.append(f"{gpu.name} has no bfloat16: training uses fp16 mixed precision (loss scaling).")
    elif dtype == "bfloat16" and not gpu.bf16:
        warnings.append(f"{gpu.name} does not support bfloat16 (compute capability < 8.0); using float16 instead.")
        dtype = "float16"
    asked_attn = fixed.pop("attn", None)
    attn = asked_attn or "sdpa"
    if spec.attn_logit_softcapping is not None and attn != "eager":
        # transformers' SDPA and flash kernels have no attention logit soft-capping, so the model
        # class (Gemma-2) refuses them and loads eager attention (`_supports_sdpa = False`;
        # tuneplan/training/modeling.py `resolve_attention`): plan what runs
        note = (f"{spec.name}'s attention uses logit soft-capping, which only eager attention implements: "
                "it trains with eager attention (scores grow with the square of the sequence length).")
        (warnings if asked_attn else reasons).append(note if not asked_attn else f"--attn {asked_attn}: {note}")
        attn = "eager"
    if attn == "flash" and gpu.arch in ("volta", "turing"):
        warnings.append(f"flash-attention-2 needs an Ampere or newer GPU; {gpu.name} uses sdpa instead.")
        attn = "sdpa"

    if constraints.method == "full" and dtype == "float16":
        # HF Trainer's fp16 GradScaler refuses fp16 parameters ("Attempting to unscale FP16
        # gradients", torch/amp/grad_scaler.py `_unscale_grads_`): full fine-tuning in fp16
        # needs fp32 master weights, which our training path does not keep.
        warnings.append(f"full fine-tuning on {gpu.name} (no bfloat16) would train fp16 weights with fp16 mixed "
                        "precision, which the trainer refuses; use LoRA/QLoRA on this card.")
    seq = DEFAULT_SEQ_LEN if constraints.seq_len_max else choose_seq_len(spec, constraints, dataset_stats, warnings,
                                                                         reasons)
    fixed.pop("seq_len", None)
    if fixed.get("offload_activations") and fixed.get("grad_checkpointing") is False:
        raise ValueError("offload_activations needs gradient checkpointing (it offloads the checkpointed layer "
                         "inputs): --grad-checkpointing on, or --offload-activations off")
    base = replace(TrainSetup(), compute_dtype=dtype, attn=attn, seq_len=seq, fused_ce=True,
                   num_gpus=n, strategy=strategy, cpu_offload=constraints.cpu_offload and strategy == "fsdp",
                   **{k: v for k, v in fixed.items() if k not in ("micro_batch", "grad_accum", "grad_checkpointing",
                                                                 "optimizer", "fused_ce", "method", "cpu_offload")})
    usable = hardware.usable_bytes()
    budget = int(usable * (1.0 - constraints.safety_margin))
    search = _Search(spec, gpu, budget, cpu_offload=constraints.cpu_offload and strategy == "fsdp", nodes=nodes,
                     inter_node_gbs=constraints.inter_node_gbs, host_ram=constraints.host_ram_bytes)
    methods = _methods(constraints)

    # -- batch geometry (per GPU: the effective batch is micro-batch x accumulation x GPUs) -----
    mb_fixed, ga_fixed = fixed.get("micro_batch"), fixed.get("grad_accum")
    effective = max(1, constraints.effective_batch // n)
    if n > 1 and constraints.effective_batch % n and not (mb_fixed and ga_fixed):
        warnings.append(f"effective batch {constraints.effective_batch} is not a multiple of {n} GPUs: "
                        f"planning {effective * n} sequences per optimizer step.")
    if mb_fixed and ga_fixed:
        mbs, effective, ga_for = [mb_fixed], mb_fixed * ga_fixed, ga_fixed
    elif mb_fixed:
        mbs, ga_for = [mb_fixed], max(1, math.ceil(effective / mb_fixed))
        effective = mb_fixed * ga_for
    elif ga_fixed:
        mbs, ga_for = [max(1, effective // ga_fixed)], ga_fixed
        effective = mbs[0] * ga_fixed
    else:
        mbs, ga_for = _divisors(effective, MAX_MICRO_BATCH), None

    # offloading moves the checkpointed layer inputs, so it implies checkpointing (the trainer turns it
    # on: tuneplan/training/long_context.effective_setup)
    ckpts = [fixed["grad_checkpointing"]] if "grad_checkpointing" in fixed else \
        [True] if fixed.get("offload_activations") else [False, True]
    fused = [fixed["fused_ce"]] if "fused_ce" in fixed else [True]

    def optimizers(method: str, tried_fit: bool) -> list[str]:
        if "optimizer" in fixed:
            return [fixed["optimizer"]]
        if method == "full":
            return ["adamw", "paged-adamw-8bit"]
        return ["adamw"] if tried_fit else ["paged-adamw-8bit"]

    # the long-context path is planned for one GPU (several GPUs shard what they hold instead);
    # knobs the user fixes apply everywhere
    rungs = _long_context_rungs(base, fixed, mbs, methods, spec) if (n == 1 and strategy == "single") else []
    if constraints.seq_len_max:
        seq = _longest_seq(search, base, methods, fixed, rungs, effective, ga_for, reasons, warnings, spec)
        base = replace(base, seq_len=seq)

    def setup_for(over: dict, method: str, ck: bool, fce: bool, opt: str) -> TrainSetup:
        s = replace(replace(base, **over), method=method, grad_checkpointing=ck, fused_ce=fce, optimizer=opt)
        if method == "full":  # a full fine-tune trains the table: it stays on the card
            s = replace(s, offload_embedding=base.offload_embedding)
        return s

    def search_groups(variants) -> dict[tuple, list[Candidate]]:
        out: dict[tuple, list[Candidate]] = {}
        for vi, (over, v_mbs) in enumerate(variants):
            v_ckpts = [True] if over.get("grad_checkpointing") else ckpts
            for method in methods:
                for ck in v_ckpts:
                    for fce in fused:
                        any_fit = False
                        for opt in optimizers(method, True):
                            found = search.largest_fitting(setup_for(over, method, ck, fce, opt), v_mbs, effective,
                                                           ga_for)
                            out[(vi, method, ck, fce, opt)] = found
                            any_fit = any_fit or bool(found)
                        if not any_fit and "optimizer" not in fixed and method != "full":
                            for opt in optimizers(method, False):
                                out[(vi, method, ck, fce, opt)] = search.largest_fitting(
                                    setup_for(over, method, ck, fce, opt), v_mbs, effective, ga_for)
        return out

    groups = search_groups([({}, mbs)])
    fitting = [c for cands in groups.values() for c in cands]
    rung = None
    if not fitting and not _activations_could_fit(search, base, methods, fixed, effective):
        rungs = []  # the weights alone do not fit: no activation saving helps, the standard answer stands
    for name, variants in rungs:
        if fitting:
            break
        # nothing fits the sequence as it is: the long-context path, cheapest step first
        groups = search_groups(variants)
        fitting = [c for cands in groups.values() for c in cands]
        rung = name
    price = constraints.price_per_hour if constraints.price_per_hour is not None else gpu.price_per_hour
    tokens = (dataset_stats.total_tokens if dataset_stats and dataset_stats.total_tokens else None)
    assumed = tokens is None
    tokens = tokens or DEFAULT_DATASET_TOKENS

    def finish(fits: bool, choice: Candidate, alts, suggestions) -> PlanResult:
        if choice.setup.method == "qlora" and spec.is_moe():
            warnings.append(_moe_qlora_sentence(spec, fits))
        if choice.setup.seq_len > spec.max_position_embeddings and constraints.seq_len_max:
            warnings.append(f"sequence length {choice.setup.seq_len} is beyond {spec.name}'s context of "
                            f"{spec.max_position_embeddings} tokens. {_rope_sentence(spec)}")
        short = search.host_short(base.seq_len) if not fits else None
        host_short = short.host_bytes() if short is not None else None
        if short is not None and host_short is not None:
            suggestions = list(suggestions) + [
                f"What the long-context path keeps in host RAM (offloaded activations, the embedding table) "
                f"needs {_gib(host_short)} "
                f"({short.describe()}); {_gib(constraints.host_ram_bytes)} is available."]
        secs = training_seconds(choice.throughput.tokens_per_second, tokens, constraints.epochs) if fits else None
        return PlanResult(
            fits=fits, choice=choice, alternatives=tuple(alts), reasons=tuple(reasons), warnings=tuple(warnings),
            suggestions=tuple(suggestions), usable_bytes=usable, budget_bytes=budget, hardware=hardware,
            dataset_tokens=tokens, dataset_tokens_assumed=assumed, epochs=constraints.epochs, seconds=secs,
            cost=training_cost(secs, price, n), price_per_hour=price, evaluated=len(search.cache),
            nodes=nodes, cpu_offload=search.cpu_offload, host_ram_bytes=constraints.host_ram_bytes,
            host_ram_short_bytes=host_short,
        )

    if not fitting:
        smallest, suggestions = _explain_no_fit(spec, hardware, constraints, base, methods, fixed, search, budget,
                                                rungs, effective, ga_for)
        return finish(False, smallest, [], suggestions)

    choice = _pick(fitting, methods, constraints, reasons)
    _explain_choice(choice, fitting, groups, methods, constraints, reasons, spec, budget, usable, search)
    _explain_long_context(choice, rung, fixed, constraints, reasons, spec, search)
    alts = _alternatives(choice, groups)
    return finish(True, choice, alts, [])


def _long_context_rungs(base: TrainSetup, fixed: Mapping[str, Any], mbs: list[int],
                        methods: list[str], spec: ModelSpec | None = None) -> list[tuple[str, list[tuple[dict, list[int]]]]]:
    """The long-context path's steps, cheapest first: (name, [(knob overrides, micro-batches)]).

    1. `linear`: attention memory linear in the sequence. trl's padding-free packing hands SDPA a
       (b*s)^2 block mask (planner/memory.py `_mask_elems`), so packing goes off and the micro-batch
       to 1: one unpadded row needs no mask and SDPA runs its flash kernel (transformers
       masking_utils.py `_ignore_causal_mask_sdpa`). flash-attention-2 takes packed rows as varlen
       offsets, so `--attn flash` keeps packing (the training path falls back to SDPA where the
       flash_attn package is missing, tuneplan/training/modeling.py `resolve_attention`, so the
       planner does not pick flash by itself).
    2. `offload`: tiled MLP, activation offloading (with checkpointing), or both; with the chunked
       RMSNorm where the model's norm is Llama's (planner/memory.py `LLAMA_RMSNORM_MODEL_TYPES`):
       it only takes memory away and costs a few more op calls (planner/throughput.py), so every
       variant of the step has it, and it alone is the step's first variant.
    3. `embedding`: the same with the input embedding table in host RAM (LoRA/QLoRA with an
       untied table: planner/memory.py `embedding_offload_applies`).
    4. `dropout`: the variants of steps 2 and 3 with LoRA dropout 0 (peft's dropout makes a copy of
       every adapted module's input, planner/memory.py `_layer_activations`); those of step 2 keep
       the table on the card, for a host short of RAM for it.
    Knobs the user fixed are never changed; a step that would change nothing is left out."""
    rungs: list[tuple[str, list[tuple[dict, list[int]]]]] = []
    lin: dict[str, Any] = {}
    lin_mbs = mbs
    if base.attn == "sdpa" and base.packing and "packing" not in fixed:
        lin = {"packing": False}
        if "micro_batch" not in fixed:
            lin_mbs = [1]
        rungs.append(("linear", [(lin, lin_mbs)]))
    offs = [fixed["offload_activations"]] if "offload_activations" in fixed else [False, True]
    tiles = [fixed["tiled_mlp"]] if "tiled_mlp" in fixed else [False, True]
    if fixed.get("grad_checkpointing") is False:
        offs = [o for o in offs if not o]
    from planner.memory import LLAMA_RMSNORM_MODEL_TYPES

    helps = spec is not None and spec.model_type in LLAMA_RMSNORM_MODEL_TYPES
    norm = fixed["chunked_norm"] if "chunked_norm" in fixed else (helps or base.chunked_norm)
    combos = [(o, t) for t in tiles for o in offs
              if (o, t, norm) != (base.offload_activations, base.tiled_mlp, base.chunked_norm)]
    variants = []
    for o, t in combos:
        over = {**lin, "offload_activations": o, "tiled_mlp": t, "chunked_norm": norm}
        if o:
            over["grad_checkpointing"] = True
        variants.append((over, lin_mbs))
    if variants:
        rungs.append(("offload", variants))
    if ("offload_embedding" not in fixed and not base.offload_embedding and spec is not None
            and not spec.tie_word_embeddings and any(m != "full" for m in methods)):
        # the frozen input embedding table into host RAM (planner/memory.py `embedding_offload_applies`):
        # it takes the table off the card and costs one copy of the looked-up rows per micro-batch
        embedded = [({**over, "offload_embedding": True}, v_mbs) for over, v_mbs in (variants or [(dict(lin), lin_mbs)])]
        rungs.append(("embedding", embedded))
        # dropout 0 follows with the table on the card too: a host short of RAM for the table
        variants = variants + embedded
    if "lora_dropout" not in fixed and base.lora_dropout > 0 and any(m != "full" for m in methods):
        last = variants or [(dict(lin), lin_mbs)]
        rungs.append(("dropout", [({**over, "lora_dropout": 0.0}, v_mbs) for over, v_mbs in last]))
    return rungs


_STATIC = ("runtime_overhead", "quantized_weights", "unquantized_weights", "adapter_weights")


def _activations_could_fit(search: "_Search", base: TrainSetup, methods: list[str], fixed: Mapping[str, Any],
                           effective: int) -> bool:
    """Whether the weights, adapters and CUDA context of some allowed method leave room on the
    card at all: the long-context path saves activations, nothing else."""
    for m in methods:
        setup = _smallest_setup(base, m, fixed, effective)
        if "offload_embedding" not in fixed:
            setup = replace(setup, offload_embedding=True)  # the long-context path may take the table off the card
        c = search.eval(setup)
        if sum(c.memory.components.get(k, 0) for k in _STATIC) < search.budget:
            return True
    return False


def _least_memory(base: TrainSetup, method: str, fixed: Mapping[str, Any], rungs, effective: int,
                  ga_for: int | None) -> TrainSetup:
    """The configuration of `method` with the least memory the long-context path allows: every
    step's overrides (the last step's most aggressive variant), micro-batch 1 or the fixed one,
    checkpointing unless fixed off, 8-bit paged AdamW unless an optimizer is fixed."""
    over: dict[str, Any] = {}
    for _, variants in rungs:
        for o, _mbs in variants:
            for k, v in o.items():
                if k in ("offload_activations", "tiled_mlp", "chunked_norm", "offload_embedding", "grad_checkpointing"):
                    over[k] = over.get(k, False) or v
                else:
                    over[k] = v
    mb = fixed.get("micro_batch", 1)
    ga = ga_for if ga_for is not None else max(1, effective // mb)
    s = replace(replace(base, **over), method=method, micro_batch=mb, grad_accum=ga,
                grad_checkpointing=fixed.get("grad_checkpointing", True),
                optimizer=fixed.get("optimizer", "paged-adamw-8bit"))
    if method == "full":
        s = replace(s, lora_dropout=base.lora_dropout, offload_embedding=base.offload_embedding)
    return s


def _longest_seq(search: "_Search", base: TrainSetup, methods: list[str], fixed: Mapping[str, Any], rungs,
                 effective: int, ga_for: int | None, reasons: list[str], warnings: list[str],
                 spec: ModelSpec) -> int:
    """`--seq-len max`: the longest multiple of SEQ_ROUND tokens at which the least-memory
    configuration of one of `methods` (with and without the tiled MLP) fits (device budget and,
    when known, host RAM). Memory grows with the sequence, so it doubles to bracket the limit,
    then bisects (a few dozen memory estimates per configuration; no speed estimates)."""
    def fits(setup: TrainSetup, seq: int) -> bool:
        return search.fits_memory(search.memory(replace(setup, seq_len=seq)))

    best, best_setup = 0, None
    setups = []
    for method in methods:
        least = _least_memory(base, method, fixed, rungs, effective, ga_for)
        setups.append(least)
        if least.tiled_mlp and "tiled_mlp" not in fixed:
            # one shard (a sequence up to the hidden size) costs more tiled than untiled: the
            # untiled variant has its own, monotone, limit
            setups.append(replace(least, tiled_mlp=False))
        if search.host_ram is not None:
            # a host with little RAM: the least-memory configuration may not fit the host at all
            # while one that keeps less there fits a shorter sequence (each its own monotone limit)
            for lean_activations in (False, True):
                if "offload_embedding" in fixed or (lean_activations and "offload_activations" in fixed):
                    continue
                for s in list(setups):
                    v = replace(s, offload_embedding=False)
                    if lean_activations:
                        v = replace(v, offload_activations=False)
                    if v not in setups:
                        setups.append(v)
    for setup in setups:
        lo = _longest_units(setup, functools.partial(fits, setup), 1, MAX_SEQ_SEARCH // SEQ_ROUND, spec.hidden_size)
        if lo is None:
            continue
        if lo * SEQ_ROUND > best:
            best, best_setup = lo * SEQ_ROUND, setup
    if best_setup is None:
        warnings.append(f"--seq-len max: not even {SEQ_ROUND} tokens fit; planning with {DEFAULT_SEQ_LEN}.")
        return DEFAULT_SEQ_LEN
    c = Candidate(replace(best_setup, seq_len=best), search.memory(replace(best_setup, seq_len=best)),
                  estimate_throughput(search.spec, replace(best_setup, seq_len=best), search.gpu), True)
    nxt = search.memory(replace(best_setup, seq_len=best + SEQ_ROUND))
    over = "" if best + SEQ_ROUND > MAX_SEQ_SEARCH else (
        f"; {best + SEQ_ROUND} tokens would need {_gib(nxt.device_bytes, 2)} of the {_gib(search.budget, 2)} budget"
        + (f" and {_gib(nxt.host_bytes())} of host RAM"
           if search.host_ram is not None and nxt.device_bytes <= search.budget else ""))
    reasons.append(f"Sequence length {best}: the longest that fits (--seq-len max, searched in steps of {SEQ_ROUND} "
                   f"tokens with the least-memory configuration, {c.describe()}){over}.")
    return best


def _longest_units(setup: TrainSetup, fits, lo: int, cap: int, hidden: int) -> int | None:
    """The longest sequence, in units of SEQ_ROUND tokens between `lo` and `cap`, at which
    `fits(tokens)` holds for `setup`; None when `lo` does not fit. Memory grows with the sequence,
    so it doubles to bracket the limit, then bisects; with the tiled MLP it then walks the shard
    steps: the shard count steps up at multiples of the hidden size (planner/memory.py
    `tiled_mlp_shards`), and its shard, so the memory, drops there, so past such a step a longer
    sequence can fit where a shorter one did not. Memory grows within a step and from one step's
    start to the next, so the walk goes on while a step's start fits."""
    if lo > cap or not fits(lo * SEQ_ROUND):
        return None
    hi = lo * 2  # lo fits, hi unknown
    while hi <= cap and fits(hi * SEQ_ROUND):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)

    def fits_units(u: int) -> bool:
        return fits(u * SEQ_ROUND)

    lo = _bisect(fits_units, lo, hi)
    if setup.tiled_mlp:
        while True:
            start = -(-_next_shard_step(replace(setup, seq_len=lo * SEQ_ROUND), hidden) // SEQ_ROUND)
            if start > cap or not fits(start * SEQ_ROUND):
                break
            end = _next_shard_step(replace(setup, seq_len=start * SEQ_ROUND), hidden) // SEQ_ROUND + 1
            lo = _bisect(fits_units, start, min(end, cap + 1))
    return lo


def _bisect(fits, lo: int, hi: int) -> int:
    """The largest n in [lo, hi) with fits(n), given fits(lo) and not fits(hi) (monotone between)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _next_shard_step(setup: TrainSetup, hidden: int) -> int:
    """The shortest sequence longer than `setup.seq_len` whose tiled MLP has one shard more."""
    from planner.memory import tiled_mlp_shards

    shards, _ = tiled_mlp_shards(setup, hidden)
    per_seq = setup.micro_batch if (setup.packing and setup.attn != "eager") else 1  # positions per token of seq
    return shards * hidden // per_seq + 1


def _explain_long_context(choice: Candidate, rung: str | None, fixed: Mapping[str, Any], constraints: Constraints,
                          reasons: list[str], spec: ModelSpec, search: "_Search") -> None:
    """Why the long-context knobs are on (or as asked), what attention runs, the host RAM and the
    time they cost."""
    s = choice.setup
    T = s.micro_batch * s.seq_len
    a = 4 if s.compute_dtype == "float32" else 2
    L = spec.num_layers
    if rung is not None:
        reasons.append(f"Nothing fits at {s.seq_len} tokens with the standard path, so the long-context path is on "
                       "(docs/long-context.md).")
    if s.offload_activations or s.tiled_mlp or rung is not None or constraints.seq_len_max:
        if s.attn == "flash":
            att = "flash-attention-2 (packed rows as varlen offsets, no mask): memory linear in the sequence"
        elif s.attn == "eager":
            att = "eager attention: its scores grow with the square of the sequence length"
        elif s.packing:
            att = ("SDPA with padding-free packing: its block mask grows with the square of the tokens per "
                   "micro-batch (--attn flash, or --packing off at micro-batch 1, avoid it)")
        else:
            att = ("SDPA on unpacked rows" + (" (one row per micro-batch: no mask, the flash kernel), memory linear "
                                              "in the sequence" if s.micro_batch == 1 else
                                              " (padded rows: a batch x seq^2 mask)"))
        why = " (packing off: padding-free packing would hand SDPA a quadratic block mask)"             if (rung is not None and not s.packing and "packing" not in fixed) else ""
        reasons.append(f"Attention: {att}{why}.")
    if s.offload_activations:
        host = choice.host_bytes()
        have = (f", of {_gib(constraints.host_ram_bytes)} available" if constraints.host_ram_bytes is not None
                else "; check the machine has it")
        how = "as asked" if "offload_activations" in fixed else "because the checkpointed layer inputs do not fit"
        reasons.append(f"Activation offloading is on ({how}): the {L} checkpointed layer inputs "
                       f"({_gib(L * T * spec.hidden_size * a)}) wait in pinned host RAM, so the card holds one layer's "
                       f"recomputation; it needs {_gib(host)} of host RAM{have}.")
    if s.tiled_mlp:
        from planner.memory import tiled_mlp_shards

        shards, per = tiled_mlp_shards(s, spec.hidden_size)
        how = "as asked" if "tiled_mlp" in fixed else "because one layer's MLP intermediates do not fit"
        reasons.append(f"Tiled MLP is on ({how}): each MLP runs in {shards} shards of {per} tokens and is recomputed "
                       f"in the backward, so its intermediates ({_gib(3 * T * spec.intermediate_size * a)} untiled) "
                       "exist for one shard at a time.")
    if s.chunked_norm:
        from planner.memory import LLAMA_RMSNORM_MODEL_TYPES, norm_chunk_tokens

        if spec.model_type in LLAMA_RMSNORM_MODEL_TYPES:
            how = "as asked" if "chunked_norm" in fixed else "with the long-context path: it only saves memory"
            reasons.append(f"Chunked RMSNorm is on ({how}): each norm keeps its input and one fp32 value per token, "
                           f"and computes in fp32 {norm_chunk_tokens(T, spec.hidden_size)} tokens at a time "
                           f"(transformers' keeps an fp32 copy, {_gib(T * spec.hidden_size * 4)}, and its backward "
                           "four).")
        else:
            reasons.append(f"Chunked RMSNorm changes nothing here: {spec.name}'s norm is not Llama's RMSNorm.")
    if s.offload_embedding:
        from planner.memory import embedding_offload_applies

        if embedding_offload_applies(spec, s):
            how = "as asked" if "offload_embedding" in fixed else "because the sequence does not fit with it on the card"
            table = choice.memory.details.get("embed_tokens_host", 0)
            have = (f", of {_gib(constraints.host_ram_bytes)} available" if constraints.host_ram_bytes is not None
                    else "")
            reasons.append(f"The input embedding table stays in host RAM ({how}): {_gib(table)} less on the card; each "
                           f"micro-batch's tokens are looked up on the host and only their rows "
                           f"({_gib(T * spec.hidden_size * a, 2)}) are copied up (host RAM in all, with the offloaded "
                           f"activations: {_gib(choice.host_bytes())}{have}).")
        else:
            why = ("its embedding is tied to the lm_head, which the loss needs on the card" if spec.tie_word_embeddings
                   else "full fine-tuning trains the table" if s.method == "full" else "it is planned for one GPU")
            reasons.append(f"The host-resident embedding changes nothing here: {why}.")
    if rung == "dropout" and s.method != "full":
        reasons.append(f"LoRA dropout 0 (instead of {TrainSetup().lora_dropout:g}): dropout copies the input of every "
                       "adapted module, too much at this length (--lora-dropout to fix it).")
    if (s.offload_activations or s.tiled_mlp or s.offload_embedding) and choice.throughput.micro_batch_seconds:
        plain = estimate_throughput(spec, replace(s, offload_activations=False, tiled_mlp=False, chunked_norm=False,
                                                  offload_embedding=False), search.gpu)
        if plain.micro_batch_seconds:
            extra = choice.throughput.micro_batch_seconds - plain.micro_batch_seconds
            copy = choice.throughput.parts.get("offload", 0.0)
            reasons.append(f"Their time: +{extra:.2f} s per micro-batch of {choice.throughput.micro_batch_seconds:.2f} s "
                           f"({extra / choice.throughput.micro_batch_seconds:.0%})"
                           + (f", of which {copy:.2f} s host copies not hidden behind compute" if copy else "")
                           + (", the rest the tiled MLP's extra forward" if s.tiled_mlp and copy else "") + ".")


def _moe_qlora_sentence(spec: ModelSpec, fits: bool) -> str:
    """What QLoRA does to a transformers-5 MoE model, and what to do instead."""
    experts = sum(m.weight_params() for layer in spec.layers for m in layer if m.kind == "expert")
    # transformers 5 stores MoE experts as fused 3-D parameters (models/mixtral/modeling_mixtral.py
    # `MixtralExperts`); its bitsandbytes integration (`replace_with_bnb_linear`) swaps only
    # nn.Linear modules for Linear4bit, so the experts keep the compute dtype
    text = (f"QLoRA keeps the experts of {spec.name} in 16 bits ({_gib(experts * 2)}): transformers 5 stores "
            "them as fused 3-D tensors and bitsandbytes quantizes only nn.Linear layers, so 4 bits shrink the "
            "attention and router weights only (the classic one-card 4-bit MoE needs per-expert nn.Linear "
            "layers, as in transformers 4).")
    if not fits:
        text += " What fits instead is under 'What would make it fit': more GPUs with FSDP or a bigger card."
    return text


def solve(spec: ModelSpec, hardware: Hardware, constraints: Constraints | None = None,
          dataset_stats: DatasetStats | None = None) -> PlanResult:
    """Pick the fastest configuration of `spec` that fits `hardware` under `constraints`.

    Memory per configuration comes from `planner.parallel.estimate_parallel_memory`
    (`device_bytes` per GPU, what nvidia-smi shows), speed from
    `planner.throughput.estimate_throughput` (all GPUs together). Sizes in bytes, times in
    seconds, cost in USD (all GPUs).

    GPU count and strategy: a count given (`constraints.gpus` or a fixed `num_gpus`) is
    used as is. Left to the solver:
    - GPUs NVML found (`hardware.source == "nvml"`, `hardware.count` > 1): all of them, since
      they are there: DDP when a replica fits one GPU (throughput scales), else FSDP;
    - a catalog card or a memory size: one GPU when the model fits one; otherwise, when
      `max_gpus` allows more than one, the fewest of 2, 4, 8, 16, ... (up to `max_gpus`) that
      hold it, spanning ceil(n / gpus_per_node) machines past one box; with `max_gpus` unset
      the plan stays on one GPU and names the fewest GPUs that would hold it (one machine) in
      its suggestions.
    Strategy `auto`: DDP when it fits (no weight traffic), else FSDP.
    """
    constraints = constraints or Constraints()
    fixed = dict(constraints.fixed)
    n_fixed = constraints.gpus or fixed.pop("num_gpus", None)
    strategy = constraints.strategy if constraints.strategy != "auto" else fixed.pop("strategy", "auto")
    fixed.pop("strategy", None)
    if fixed.pop("cpu_offload", False):
        constraints = replace(constraints, cpu_offload=True)
    if strategy not in ("auto", "single", "ddp", "fsdp"):
        raise ValueError(f"strategy must be auto, ddp or fsdp (got {strategy!r})")
    if n_fixed is not None and (not isinstance(n_fixed, int) or n_fixed <= 0):
        raise ValueError(f"gpus must be a whole number > 0 (got {n_fixed})")
    if strategy == "single" and n_fixed and n_fixed > 1:
        raise ValueError(f"strategy single runs on one GPU (got {n_fixed} GPUs): use ddp or fsdp")
    if constraints.cpu_offload and strategy == "ddp":
        raise ValueError("CPU offload needs FSDP (DDP keeps a full replica on every GPU)")
    base_constraints = replace(constraints, fixed=fixed)

    def strategies(n: int) -> list[str]:
        if n == 1:
            return ["fsdp"] if (constraints.cpu_offload or strategy == "fsdp") else ["single"]
        if strategy in ("ddp", "fsdp"):
            return [strategy]
        return ["fsdp"] if constraints.cpu_offload else ["ddp", "fsdp"]

    def attempt(n: int) -> PlanResult:
        first = None
        for st in strategies(n):
            r = _solve_count(spec, hardware, base_constraints, dataset_stats, n, st)
            if r.fits:
                if first is not None:
                    r = _note_strategy(r, first)
                return r
            first = first or r
        assert first is not None, "strategies() names at least one strategy"
        return first

    if n_fixed is not None:
        result = attempt(n_fixed)
        if not result.fits:
            more = _more_gpus(spec, hardware, base_constraints, dataset_stats, strategies, start=n_fixed)
            if more is not None:
                result = replace(result, suggestions=result.suggestions + (_more_gpus_text(more, hardware),))
        return result
    if hardware.source == "nvml" and hardware.count > 1:
        n = min(hardware.count, constraints.max_gpus or hardware.count)
        result = attempt(n)
        if result.fits:
            result = replace(result, reasons=(f"All {n} GPUs of the box train together: "
                                              f"{_strategy_sentence(result.choice.setup)}",) + result.reasons)
        return result
    one = attempt(1)
    if one.fits:
        return one
    cap = constraints.max_gpus or 1
    if cap <= 1:  # more GPUs are a suggestion only (within one machine)
        more = _more_gpus(spec, hardware, replace(base_constraints, max_gpus=constraints.gpus_per_node),
                          dataset_stats, strategies, start=1)
        if more is not None:
            one = replace(one, suggestions=one.suggestions + (_more_gpus_text(more, hardware),))
        return one
    more = _more_gpus(spec, hardware, base_constraints, dataset_stats, strategies, start=1)
    if more is None:
        return one
    need = one.choice.memory.device_bytes
    lead = (f"One {hardware.gpu.name} cannot hold {_METHOD_NAMES.get(one.choice.setup.method, '')} of {spec.name}: "
            f"the smallest configuration needs {_gib(need)} of the {_gib(one.budget_bytes)} it may use. "
            f"{more.choice.setup.num_gpus} x {hardware.gpu.name}: {_strategy_sentence(more.choice.setup)}")
    reasons = (lead,) + more.reasons
    if constraints.method == "lora" and "qlora" not in _methods(constraints):
        q = _solve_count(spec, hardware, replace(base_constraints, method="qlora"), dataset_stats, 1,
                         strategies(1)[0])
        if q.fits:
            reasons += (f"Or QLoRA on one {hardware.gpu.name}: {q.choice.describe()}, "
                        f"{_gib(q.choice.memory.device_bytes)} (--method qlora --gpus 1).",)
    return replace(more, reasons=reasons, single_gpu_need_bytes=need,
                   warnings=one.warnings if not more.warnings else more.warnings)


def _strategy_sentence(s: TrainSetup) -> str:
    if s.strategy == "ddp":
        return (f"DDP keeps a full replica on each of the {s.num_gpus} GPUs and splits the batch, so throughput "
                "scales while memory per GPU stays that of one.")
    return (f"FSDP shards the weights, gradients and optimizer states over {s.num_gpus} GPUs "
            f"so each GPU holds about 1/{s.num_gpus} of them plus "
            "the layers being computed.")


def _note_strategy(result: PlanResult, ddp_try: PlanResult) -> PlanResult:
    need = ddp_try.choice.memory.device_bytes
    return replace(result, reasons=(f"DDP does not fit: a full replica needs at least {_gib(need)} per GPU.",)
                   + result.reasons)


def _more_gpus(spec, hardware, constraints, dataset_stats, strategies, start: int) -> PlanResult | None:
    """The fewest GPUs above `start` (from AUTO_GPU_COUNTS) on which a plan fits, or None.
    The fitting plan's reasons say what the next smaller count tried would have needed."""
    cap = constraints.max_gpus or MAX_AUTO_GPUS
    last = None
    for n in AUTO_GPU_COUNTS:
        if n <= start or n > cap:
            continue
        tried = None
        for st in strategies(n):
            r = _solve_count(spec, hardware, constraints, dataset_stats, n, st)
            if r.fits:
                if last is not None:
                    ls = last.choice.setup
                    r = replace(r, reasons=(f"{ls.num_gpus} GPUs with {ls.strategy.upper()} are not enough: the smallest "
                                            f"configuration needs {_gib(last.choice.memory.device_bytes)} per GPU.",)
                                + r.reasons)
                return r
            tried = r
        last = tried
    return None


def _more_gpus_text(r: PlanResult, hardware: Hardware) -> str:
    s = r.choice.setup
    nodes = f" on {r.nodes} machines" if r.nodes > 1 else ""
    return (f"More GPUs: {s.num_gpus} x {hardware.gpu.name} with {s.strategy.upper()}{nodes} fit "
            f"({_gib(r.choice.memory.device_bytes)} per GPU; --gpus {s.num_gpus} --strategy {s.strategy}).")


def _pick(fitting: list[Candidate], methods: list[str], constraints: Constraints, reasons: list[str]) -> Candidate:
    # 1. method preference (order of `methods`)
    by_method = {m: [c for c in fitting if c.setup.method == m] for m in methods}
    method = next(m for m in methods if by_method[m])
    pool = by_method[method]
    # 2. exact 32-bit AdamW states over 8-bit ones whenever they fit (no quantization error)
    if "optimizer" not in constraints.fixed:
        exact = [c for c in pool if c.setup.optimizer == "adamw"]
        pool = exact or pool
    # 3. checkpointing only when it is clearly faster
    # Speed unknown (a memory size, no card): the largest micro-batch that fits, as fewer and
    # fuller steps keep any GPU busier (the arithmetic intensity of the matmuls grows with the
    # tokens per step: Williams et al. 2009, "Roofline"); ranking by 0 tok/s would pick batch 1.
    if any(c.tokens_per_second() for c in pool):
        best = lambda cs: max(cs, key=lambda c: (c.tokens_per_second(), c.setup.optimizer == "adamw"))
    else:
        best = lambda cs: max(cs, key=lambda c: (c.setup.micro_batch, c.setup.optimizer == "adamw"))
    no_ck = [c for c in pool if not c.setup.grad_checkpointing]
    ck = [c for c in pool if c.setup.grad_checkpointing]
    if no_ck and ck:
        a, b = best(no_ck), best(ck)
        return b if b.tokens_per_second() > CKPT_SPEEDUP_TO_SWITCH * a.tokens_per_second() else a
    return best(no_ck or ck)


def _explain_choice(choice: Candidate, fitting, groups, methods, constraints, reasons, spec, budget, usable, search):
    s = choice.setup
    m = choice.memory
    if constraints.method != "auto":
        reasons.append(f"{_METHOD_NAMES[s.method]} as asked.")
    elif s.method == "full" and not constraints.prefer_accuracy:
        reasons.append("Full fine-tuning fits, and the bake-off measured it better than LoRA and QLoRA.")
    elif s.method == "full":
        reasons.append("Full fine-tuning fits and accuracy matters most, so all weights are trained.")
    elif s.method == "lora":
        reasons.append("LoRA on the 16-bit model fits: it is faster than QLoRA and has no quantization error.")
    else:
        lora_need = search.eval(_smallest_setup(replace(s, method="lora"), "lora", constraints.fixed, s.effective_batch())).memory.device_bytes
        reasons.append(f"LoRA on the 16-bit model does not fit (it needs at least {_gib(lora_need)}); QLoRA keeps the "
                       f"frozen weights in 4-bit {s.quant_type.upper()} "
                       f"({_gib(m.components.get('quantized_weights', 0))}), so it does.")
    if constraints.prefer_accuracy and s.method != "full" and constraints.method == "auto":
        full_need = search.eval(_smallest_setup(replace(s, method="full"), "full", constraints.fixed,
                                                s.effective_batch())).memory.device_bytes
        reasons.append(f"--prefer-accuracy tries full fine-tuning first, but it does not fit (it needs at least "
                       f"{_gib(full_need)}).")
    if constraints.measured is not None:
        reasons.extend(constraints.measured.reasons(s.method, asked=constraints.method != "auto"))
    fx = constraints.fixed
    if "grad_checkpointing" in fx:
        reasons.append(f"Gradient checkpointing {'on' if s.grad_checkpointing else 'off'}, as asked.")
    elif s.grad_checkpointing:
        no_ck_fit = any(not c.setup.grad_checkpointing and c.setup.method == s.method for c in fitting)
        if no_ck_fit:
            reasons.append("Gradient checkpointing is on: it lets a larger micro-batch run, which is faster overall "
                           "despite recomputing each layer.")
        else:
            reasons.append("Gradient checkpointing is on: without it the saved activations do not fit.")
    else:
        reasons.append("Gradient checkpointing is off: the activations fit, so no layer is recomputed (about 25-30% faster).")
    if "micro_batch" in fx or "grad_accum" in fx:
        reasons.append(f"Micro-batch {s.micro_batch} x {s.grad_accum} accumulation steps (effective batch "
                       f"{s.effective_batch()}) follows the batch you gave.")
    else:
        why = ("it is the fastest micro-batch that fits" if choice.tokens_per_second() else
               "the speed of this card is unknown, so it is the largest micro-batch that fits (fuller steps "
               "use a GPU better)")
        reasons.append(f"Micro-batch {s.micro_batch} x {s.grad_accum} accumulation steps keeps the effective batch at "
                       f"{s.effective_batch()} sequences; {why}.")
    if "optimizer" in fx:
        reasons.append(f"Optimizer {s.optimizer}, as asked.")
    elif s.optimizer != "adamw":
        reasons.append(f"Optimizer {s.optimizer}: 32-bit AdamW states do not fit.")
    if s.fused_ce:
        reasons.append("The loss uses the fused (chunked) linear cross-entropy: the same loss without "
                       "materialising the full fp32 logits.")
    where = "on the card" if s.num_gpus == 1 and s.strategy != "fsdp" else "on each GPU"
    reasons.append(f"Predicted {_gib(m.device_bytes)} {where} (nvidia-smi) of {_gib(usable)} usable; "
                   f"the plan keeps {_gib(usable - budget)} free: "
                   f"{margin_sentence(constraints.safety_margin, s.num_gpus)}.")
    for note in m.notes:
        reasons.append(note[0].upper() + note[1:])


def _alternatives(choice: Candidate, groups, n: int = 4) -> list[Candidate]:
    """The best candidate of every other group that fits, fastest first; when fewer than
    two groups fit, other micro-batches of the chosen group fill in."""
    out = []
    for cands in groups.values():
        if choice in cands or not cands:
            continue
        out.append(max(cands, key=lambda c: c.tokens_per_second()))
    out.sort(key=lambda c: -c.tokens_per_second())
    if len(out) < 2:
        same = [c for cands in groups.values() if choice in cands for c in cands if c is not choice]
        same.sort(key=lambda c: -c.tokens_per_second())
        out += same[: 2 - len(out)]
    return out[:n]


def _smallest_setup(base: TrainSetup, method: str, fixed: Mapping[str, Any], effective: int | None = None) -> TrainSetup:
    """Micro-batch 1 (or the fixed one), checkpointing, fused loss: the least memory of `method`."""
    mb = fixed.get("micro_batch", 1)
    per_gpu = max(1, (effective or DEFAULT_EFFECTIVE_BATCH) // max(1, base.num_gpus))
    ga = fixed.get("grad_accum", max(1, per_gpu // mb))
    return replace(
        base, method=method, micro_batch=mb, grad_accum=ga,
        grad_checkpointing=fixed.get("grad_checkpointing", True), fused_ce=fixed.get("fused_ce", True),
        optimizer=fixed.get("optimizer", "adamw" if method != "full" else "paged-adamw-8bit"),
    )


def _explain_no_fit(spec, hardware, constraints, base, methods, fixed, search, budget, rungs=(), effective=None,
                    ga_for=None):
    """The smallest configuration of the allowed methods, and what would make it fit."""
    tries = []
    for m in methods:
        tries.append(search.eval(_smallest_setup(base, m, fixed, constraints.effective_batch)))
        if "optimizer" not in fixed and m != "full":
            tries.append(search.eval(replace(_smallest_setup(base, m, fixed, constraints.effective_batch), optimizer="paged-adamw-8bit")))
        if rungs:  # the long-context path's least-memory configuration was tried too
            tries.append(search.eval(_least_memory(base, m, fixed, rungs, effective or constraints.effective_batch,
                                                   ga_for)))
    smallest = min(tries, key=lambda c: c.memory.device_bytes)
    need = smallest.memory.device_bytes
    s = smallest.setup
    gpu = hardware.gpu
    sug = [f"The smallest configuration ({smallest.describe()}) needs {_gib(need)}, but only "
           f"{_gib(budget)} of {_gib(hardware.usable_bytes())} may be used "
           f"({margin_sentence(constraints.safety_margin, s.num_gpus)})."]
    if hardware.free_bytes is not None and hardware.free_bytes < gpu.memory_bytes * 0.9:
        sug.append(f"Other processes hold {_gib(gpu.memory_bytes - hardware.free_bytes)} of the card: "
                   "freeing it would help.")
    if s.method != "qlora" and "qlora" not in methods:
        q = search.eval(_smallest_setup(base, "qlora", fixed, constraints.effective_batch))
        if q.fits:
            sug.append(f"QLoRA fits: {_gib(q.memory.device_bytes)} (use --method qlora or auto).")
    # a shorter sequence (named even when the user fixed one)
    lo_bound = constraints.min_seq_len or 256
    units = _longest_units(s, lambda n: search.eval(replace(s, seq_len=n)).fits, max(1, -(-lo_bound // SEQ_ROUND)),
                           (s.seq_len - 1) // SEQ_ROUND, spec.hidden_size)
    best_seq = units * SEQ_ROUND if units else None
    if best_seq:
        sug.append(f"A shorter sequence fits: up to {best_seq} tokens (--seq-len {best_seq}) with {_METHOD_NAMES[s.method]}.")
    if s.lora_rank > 8 and s.method != "full":
        c = search.eval(replace(s, lora_rank=8))
        if c.fits:
            sug.append("A smaller LoRA rank fits: --lora-r 8.")
    # more GPUs: added by `solve`, which plans them (see _more_gpus_suggestion)
    # a bigger card from the catalog: the smallest memory tier that fits, cheapest in it
    fitting_cards = []
    for card in bigger_cards(need):
        limit = card.memory_bytes * (1 - constraints.safety_margin)
        if limit < need or (fitting_cards and card.memory_bytes > 1.1 * fitting_cards[0].memory_bytes):
            continue
        if estimate_parallel_memory(spec, s, card, cpu_offload=search.cpu_offload).device_bytes <= limit:
            fitting_cards.append(card)
    if fitting_cards:
        card = min(fitting_cards, key=lambda g: g.price_per_hour or 1e9)
        sug.append(f"A bigger card: {card.name} ({_gib(card.memory_bytes)}, --gpu {card.key}) fits it.")
    return smallest, sug


def trainable_count(spec: ModelSpec, setup: TrainSetup) -> int:
    """Trainable parameters of `setup` (re-exported for callers that format plans)."""
    return trainable_parameters(spec, setup)
