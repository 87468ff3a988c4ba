"""The GPU catalog: memory, bf16 support, dense bf16 TFLOP/s, bandwidth, typical price.

Sources, per column (vendor figures; "dense" = without 2:4 sparsity):
- `memory_bytes`: total memory as the card reports it through NVML / `nvidia-smi
  --query-gpu=memory.total` (MiB x 2**20), e.g. 24564 MiB for an RTX 4090, 81920 MiB for an
  A100 80GB, 81559 MiB for an H100 80GB. Boards with ECC or reserved firmware memory show a
  little less than the marketing size; where a reading is not at hand the marketing size in
  MiB is used (at most ~1% off).
- `bf16_tflops`: NVIDIA's architecture whitepapers and datasheets (Ampere GA102 whitepaper,
  Ada AD102 whitepaper, A100/H100/H200/B200/L4/L40S/T4/V100/A10 datasheets). GeForce cards run
  FP16/BF16 tensor math with FP32 accumulation at half rate, and training accumulates in FP32,
  so those cards list the FP32-accumulate figure (RTX 4090: 165.2, not 330.3). Turing and Volta
  have no bf16: their entry is the fp16 tensor rate (fp16 mixed precision is used there).
- `bandwidth_gbs`: the same datasheets (GB/s, 1e9 bytes).
- `price_per_hour`: typical on-demand USD per GPU-hour on public GPU clouds (RunPod, Lambda,
  Vast.ai marketplace medians; AWS/GCP for T4, L4, A10G), rounded, as listed on PRICES_AS_OF.
  Prices drift, mostly downwards: pass your own with `tuneplan plan --price`.

Name resolution is loose: `4090`, `RTX 4090`, `a100-80`, `H100 SXM`, `rtx-3060-12gb` and the
names NVML reports (`NVIDIA GeForce RTX 4090`, `NVIDIA A100-SXM4-80GB`) all resolve; unknown
names raise `UnknownGPU` with close matches (difflib).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

GiB = 1024**3
MiB = 1024**2


def format_gib(n: float | None, digits: int = 1) -> str:
    """Bytes as `12.3 GiB` (binary gigabytes), `-` for unknown (None)."""
    return "-" if n is None else f"{n / GiB:.{digits}f} GiB"

PRICES_AS_OF = "2025-06"
"""When the catalog's `price_per_hour` figures were read (year-month)."""

PRICE_SOURCES = (
    "RunPod community/secure cloud and Lambda on-demand list prices; Vast.ai marketplace medians "
    "for consumer cards; AWS g4dn/g5 and GCP g2 per-GPU share for T4, A10G and L4"
)


CPU_ARCH = "cpu"
"""`GPU.arch` of a machine's CPU used as the training device."""

CPU_COMPUTE_DTYPE = "float32"
"""What training computes in on a CPU: the one rule for the plan and for the run
(`tuneplan.services.machine`). The HF Trainer's `bf16=True` on the CPU means torch's CPU
autocast, far slower than float32 on most CPUs (torch docs, "Automatic Mixed Precision", CPU
ops list), and its fp16 GradScaler is CUDA-only."""


@dataclass(frozen=True)
class GPU:
    """One GPU model. Sizes in bytes, rates per second."""

    key: str
    """Catalog key, e.g. `rtx-4090`, `a100-80gb`."""
    name: str
    """Display name, e.g. `NVIDIA GeForce RTX 4090`."""
    memory_bytes: int
    """Total memory as NVML reports it, in bytes."""
    bf16: bool
    """Whether the card computes in bfloat16 (compute capability >= 8.0)."""
    arch: str
    """`volta`, `turing`, `ampere`, `ada`, `hopper`, `blackwell`: decides kernels and workspace sizes;
    `cpu` (CPU_ARCH) for a machine's CPU used as the training device."""
    bf16_tflops: float | None = None
    """Dense bf16 (fp16 where no bf16) tensor TFLOP/s with fp32 accumulation, no sparsity, as
    the card sustains it (the datasheet rate, derated for 70-75 W boards: LOW_POWER_SUSTAINED)."""
    bandwidth_gbs: float | None = None
    """Memory bandwidth in GB/s (1e9 bytes)."""
    price_per_hour: float | None = None
    """Typical on-demand USD per GPU-hour (see PRICES_AS_OF)."""
    interconnect: str = "pcie"
    """`pcie` or `nvlink` between GPUs of this model in one box."""
    compute_capability: tuple[int, int] | None = None
    """CUDA compute capability (major, minor), e.g. (8, 9) for Ada."""
    segment: str = "datacenter"
    """`consumer`, `workstation` or `datacenter` (cloud cards count as datacenter)."""
    aliases: tuple[str, ...] = ()
    """Extra loose names that resolve to this card (matched after normalisation)."""

    def is_cpu(self) -> bool:
        """Whether this is a CPU used as the training device (no CUDA)."""
        return self.arch == CPU_ARCH

    def memory_gib(self) -> float:
        """Total memory in GiB (for display)."""
        return self.memory_bytes / GiB


def _gpu(key, name, mem_mib, arch, cc, tflops, bw, price, *, seg="datacenter", link="pcie", aliases=()):
    return GPU(
        key=key, name=name, memory_bytes=int(mem_mib * MiB), bf16=cc >= (8, 0), arch=arch,
        bf16_tflops=tflops, bandwidth_gbs=bw, price_per_hour=price, interconnect=link,
        compute_capability=cc, segment=seg, aliases=tuple(aliases),
    )


LOW_POWER_SUSTAINED = 0.4
"""Share of the datasheet tensor rate a 70-75 W board (T4: 70 W, L4: 72 W) sustains in training.
The datasheet rates assume the maximum boost clock (T4: 65 TFLOP/s at 1590 MHz, base 585 MHz;
L4: 121 dense at 2040 MHz, NVIDIA T4 and L4 datasheets); under dense tensor-core work these
boards reach their power limit and the clock throttles far below boost (Jia et al. 2019,
"Dissecting the NVidia Turing T4 GPU via Microbenchmarking", arXiv:1903.07486, section on clock
throttling under power limits). 0.4 is an estimate, not a measurement: it puts a T4 at about
the rate of an RTX 3060 (170 W, 25.4 dense FP32-accumulate), as practitioners report, instead
of 2.5x above it. Replace it with a measured rate when one is at hand."""

# key, display name, NVML memory (MiB), arch, compute capability, dense bf16 TFLOP/s, GB/s, USD/h
GPUS: tuple[GPU, ...] = (
    # -- consumer (GeForce: FP32-accumulate tensor rate, see module docstring) ----------------
    _gpu("rtx-3060-12gb", "NVIDIA GeForce RTX 3060 12GB", 12288, "ampere", (8, 6), 25.4, 360, 0.08,
         seg="consumer", aliases=("3060", "rtx3060")),
    _gpu("rtx-3080-10gb", "NVIDIA GeForce RTX 3080 10GB", 10240, "ampere", (8, 6), 59.5, 760, 0.15,
         seg="consumer", aliases=("3080", "rtx3080")),
    _gpu("rtx-3090", "NVIDIA GeForce RTX 3090", 24576, "ampere", (8, 6), 71.0, 936, 0.22,
         seg="consumer", aliases=("3090", "rtx3090-24gb")),
    _gpu("rtx-4060-ti-16gb", "NVIDIA GeForce RTX 4060 Ti 16GB", 16380, "ada", (8, 9), 44.1, 288, 0.12,
         seg="consumer", aliases=("4060ti", "4060ti16", "4060ti16gb", "rtx4060ti")),
    _gpu("rtx-4070-ti", "NVIDIA GeForce RTX 4070 Ti", 12282, "ada", (8, 9), 80.2, 504, 0.15,
         seg="consumer", aliases=("4070ti", "4070ti12gb")),
    _gpu("rtx-4080", "NVIDIA GeForce RTX 4080", 16376, "ada", (8, 9), 97.5, 717, 0.25,
         seg="consumer", aliases=("4080", "4080-16gb")),
    _gpu("rtx-4090", "NVIDIA GeForce RTX 4090", 24564, "ada", (8, 9), 165.2, 1008, 0.34,
         seg="consumer", aliases=("4090", "4090-24gb")),
    _gpu("rtx-5090", "NVIDIA GeForce RTX 5090", 32607, "blackwell", (12, 0), 209.5, 1792, 0.69,
         seg="consumer", aliases=("5090", "5090-32gb")),
    # -- workstation (full-rate FP32 accumulate) -----------------------------------------------
    _gpu("rtx-a4000", "NVIDIA RTX A4000", 16376, "ampere", (8, 6), 76.7, 448, 0.17,
         seg="workstation", aliases=("a4000",)),
    _gpu("rtx-a5000", "NVIDIA RTX A5000", 24564, "ampere", (8, 6), 111.1, 768, 0.26,
         seg="workstation", link="nvlink", aliases=("a5000",)),
    _gpu("rtx-a6000", "NVIDIA RTX A6000", 49140, "ampere", (8, 6), 154.8, 768, 0.49,
         seg="workstation", link="nvlink", aliases=("a6000",)),
    _gpu("rtx-6000-ada", "NVIDIA RTX 6000 Ada Generation", 49140, "ada", (8, 9), 364.2, 960, 0.77,
         seg="workstation", aliases=("6000ada", "rtx6000ada", "rtx6000")),
    # -- datacenter / cloud --------------------------------------------------------------------
    _gpu("t4", "Tesla T4", 15360, "turing", (7, 5), 65.0 * LOW_POWER_SUSTAINED, 320, 0.35,
         aliases=("tesla-t4", "t4-16gb")),
    _gpu("v100-16gb", "Tesla V100-SXM2-16GB", 16160, "volta", (7, 0), 125.0, 900, 0.40,
         link="nvlink", aliases=("v100", "v100-sxm2-16gb", "v100-16")),
    _gpu("v100-32gb", "Tesla V100-SXM2-32GB", 32510, "volta", (7, 0), 125.0, 900, 0.50,
         link="nvlink", aliases=("v100-sxm2-32gb", "v100-32")),
    _gpu("a10g", "NVIDIA A10G", 23028, "ampere", (8, 6), 70.0, 600, 1.01,
         aliases=("a10g-24gb",)),
    _gpu("a10", "NVIDIA A10", 23028, "ampere", (8, 6), 125.0, 600, 0.75,
         aliases=("a10-24gb",)),
    _gpu("l4", "NVIDIA L4", 23034, "ada", (8, 9), 121.0 * LOW_POWER_SUSTAINED, 300, 0.70,
         aliases=("l4-24gb",)),
    _gpu("a40", "NVIDIA A40", 46068, "ampere", (8, 6), 149.7, 696, 0.44,
         link="nvlink", aliases=("a40-48gb",)),
    _gpu("l40", "NVIDIA L40", 46068, "ada", (8, 9), 181.0, 864, 0.99,
         aliases=("l40-48gb",)),
    _gpu("l40s", "NVIDIA L40S", 46068, "ada", (8, 9), 362.1, 864, 0.86,
         aliases=("l40s-48gb",)),
    _gpu("a100-40gb", "NVIDIA A100-SXM4-40GB", 40960, "ampere", (8, 0), 312.0, 1555, 1.29,
         link="nvlink", aliases=("a100-40", "a100-sxm4-40gb", "a100-pcie-40gb", "a10040gbpcie")),
    _gpu("a100-80gb", "NVIDIA A100-SXM4-80GB", 81920, "ampere", (8, 0), 312.0, 2039, 1.79,
         link="nvlink", aliases=("a100", "a100-80", "a100-sxm4-80gb", "a100-sxm", "a100-80gb-pcie",
                                 "a100-pcie", "a10080gbpcie")),
    _gpu("h100-pcie", "NVIDIA H100 PCIe", 81559, "hopper", (9, 0), 756.0, 2000, 2.49,
         aliases=("h100-pcie-80gb",)),
    _gpu("h100-sxm", "NVIDIA H100 80GB HBM3", 81559, "hopper", (9, 0), 989.4, 3350, 2.99,
         link="nvlink", aliases=("h100", "h100-80gb", "h100-sxm5", "h100-80gb-hbm3", "h100-sxm-80gb")),
    _gpu("h100-nvl", "NVIDIA H100 NVL", 95830, "hopper", (9, 0), 835.0, 3900, 2.79,
         link="nvlink", aliases=("h100nvl", "h100-94gb")),
    _gpu("gh200", "NVIDIA GH200 480GB", 97871, "hopper", (9, 0), 989.4, 4000, 1.49,
         link="nvlink", aliases=("gh200-96gb", "grace-hopper")),
    _gpu("h200", "NVIDIA H200", 143771, "hopper", (9, 0), 989.4, 4800, 3.99,
         link="nvlink", aliases=("h200-141gb", "h200-sxm")),
    _gpu("b200", "NVIDIA B200", 183359, "blackwell", (10, 0), 2250.0, 8000, 5.99,
         link="nvlink", aliases=("b200-180gb", "b200-192gb")),
)

_BY_KEY = {g.key: g for g in GPUS}

# Words that carry no identity in a GPU name ("NVIDIA GeForce RTX 4090" == "4090").
_NOISE = ("nvidia", "geforce", "tesla", "generation", "graphics", "card")


def normalize_gpu_name(text: str) -> str:
    """Lower-case, drop vendor words and separators: `NVIDIA GeForce RTX 4090` -> `rtx4090`."""
    t = text.lower()
    for word in _NOISE:
        t = t.replace(word, " ")
    return re.sub(r"[^a-z0-9]", "", t)


def _variants(compact: str) -> set[str]:
    """`rtx4090` -> {`rtx4090`, `4090`}; names with a memory size also match without `gb`."""
    out = {compact}
    if compact.startswith("rtx"):
        out.add(compact[3:])
    for v in list(out):
        if v.endswith("gb"):
            out.add(v[:-2])
    return {v for v in out if v}


def _build_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for g in GPUS:
        for text in (g.key, g.name, *g.aliases):
            for v in _variants(normalize_gpu_name(text)):
                index.setdefault(v, g.key)
    return index


_INDEX = _build_index()


class UnknownGPU(ValueError):
    """A GPU name that is not in the catalog; `.suggestions` holds close catalog keys."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "see `planner.gpus.GPUS`"
        super().__init__(f"unknown GPU '{name}': {hint}")


def get_gpu(name: str) -> GPU:
    """Resolve a loose GPU name to its catalog entry.

    Accepts catalog keys, display names, NVML names and short forms (`4090`, `a100-80`,
    `H100 SXM`). Raises `UnknownGPU` with up to three close matches otherwise.
    """
    compact = normalize_gpu_name(name)
    for v in sorted(_variants(compact), key=len, reverse=True):
        if v in _INDEX:
            return _BY_KEY[_INDEX[v]]
    # Words in a different order or extra words ("A100 80GB PCIe" -> a10080gbpcie is indexed,
    # "SXM4 A100 80GB" is not): fall back to the longest indexed name the query contains.
    contained = [
        k for k in _INDEX
        if len(k) >= 3 and any(c.isdigit() for c in k) and re.search(rf"(?<![0-9]){k}(?![0-9])", compact)
    ]
    if contained:
        return _BY_KEY[_INDEX[max(contained, key=len)]]
    raise UnknownGPU(name, suggest_gpus(name))


def suggest_gpus(name: str, n: int = 3) -> list[str]:
    """Up to `n` catalog keys that look like `name` (difflib ratio on normalised names)."""
    compact = normalize_gpu_name(name)
    close = difflib.get_close_matches(compact, list(_INDEX), n=n * 4, cutoff=0.5)
    keys: list[str] = []
    for c in close:
        key = _INDEX[c]
        if key not in keys:
            keys.append(key)
    return keys[:n]


def match_nvml(name: str, memory_bytes: int | None = None) -> GPU | None:
    """The catalog entry for a card NVML reports, or None when it is not in the catalog.

    When several variants share a name (A100 40/80 GB, V100 16/32 GB, RTX 3060 8/12 GB), the
    variant whose memory is closest to `memory_bytes` wins, and a card whose memory is more
    than 15% away from every variant is treated as unknown.
    """
    try:
        first = get_gpu(name)
    except UnknownGPU:
        return None
    if memory_bytes is None:
        return first
    family = re.sub(r"-\d+gb$", "", first.key)
    candidates = [g for g in GPUS if g.key == first.key or re.sub(r"-\d+gb$", "", g.key) == family]
    best = min(candidates, key=lambda g: abs(g.memory_bytes - memory_bytes))
    if abs(best.memory_bytes - memory_bytes) > 0.15 * best.memory_bytes:
        return None
    return best


# -- interconnect ----------------------------------------------------------------------------
# Bandwidth one GPU can send to its peers, per direction, in GB/s (1e9 bytes), as vendor
# datasheets give it:
# - NVLink: V100 NVLink2 300 GB/s total (150/direction); A100 NVLink3 600 GB/s (300/direction);
#   H100/H200/GH200 NVLink4 900 GB/s (450/direction); B200 NVLink5 1800 GB/s (900/direction);
#   H100 NVL pairs its two cards with 600 GB/s NVLink bridges (300/direction); the 2-card
#   NVLink bridges of RTX 3090 / RTX A5000 / A6000 / A40 carry 112.5 GB/s (56/direction).
# - PCIe x16 per direction: Gen3 16 GB/s (T4, V100), Gen4 32 GB/s (Ampere, Ada), Gen5 64 GB/s
#   (H100 PCIe, RTX 5090, Blackwell).
# - GeForce cards in one box: no peer-to-peer over PCIe (NVIDIA disabled it on GeForce
#   boards; accelerate sets NCCL_P2P_DISABLE for the RTX 4090), so NCCL stages every transfer
#   through host memory, and consumer boards split their lanes x8/x8 between two cards.
#   Measured, not derived: the fsdp_qlora 2 x RTX 3090 (no NVLink) FSDP rows M104-M107
#   (micro-batch 1, where the weight all-gathers dominate) imply 2.3-3.5 GB/s of NCCL
#   bandwidth, i.e. about 1/8 of the x16 link (4 GB/s on PCIe Gen4 before NCCL's 80%); see
#   tests/planner/test_parallel.py. The RTX 3090's optional NVLink bridge is rare in rented
#   and published multi-GPU boxes, so the catalog plans it over PCIe too.
# NCCL reaches ~80% of these as bus bandwidth (nccl-tests PERFORMANCE.md "busbw"); the
# throughput model applies that factor.
_NVLINK_GBS = {"volta": 150.0, "ampere": 300.0, "hopper": 450.0, "blackwell": 900.0}
_NVLINK_BRIDGE_GBS = 56.0
_PCIE_GBS = {"volta": 16.0, "turing": 16.0, "ampere": 32.0, "ada": 32.0, "hopper": 64.0, "blackwell": 64.0}
NO_P2P_FRACTION = 1 / 8
"""Share of the x16 PCIe link NCCL gets between GeForce cards (see above; measured)."""
_BRIDGED = ("rtx-a5000", "rtx-a6000", "a40")

DEFAULT_INTER_NODE_GBS = 12.5
"""Between machines when nothing else is known: 100 Gb/s Ethernet (12.5 GB/s per direction),
the common rented-cluster network; InfiniBand HDR/NDR (25/50 GB/s) is faster."""


def interconnect_gbs(gpu: GPU) -> float | None:
    """Per-direction GB/s between two GPUs of this model in one box (see the table above);
    None when the card's architecture is unknown."""
    if gpu.interconnect == "nvlink":
        if gpu.key in _BRIDGED:
            return _NVLINK_BRIDGE_GBS
        if gpu.key == "h100-nvl":
            return 300.0
        bw = _NVLINK_GBS.get(gpu.arch)
        if bw is not None:
            return bw
    bw = _PCIE_GBS.get(gpu.arch)
    if bw is None:
        return None
    return bw * NO_P2P_FRACTION if gpu.segment == "consumer" else bw


# -- host link -------------------------------------------------------------------------------
# Between the card and host memory (activation offloading, FSDP CPU offload), per direction:
# the card's PCIe x16 link as its datasheet states it (the `_PCIE_GBS` generations above: T4,
# V100 Gen3; A100 (SXM4 and PCIe), A10/A40/L4/L40/L40S, RTX 30/40 and RTX A-series Gen4; H100,
# H200, B200, RTX 5090 Gen5), except GH200, whose Hopper GPU reaches its Grace CPU's memory over
# NVLink-C2C at 900 GB/s total, 450 per direction (NVIDIA GH200 datasheet).
_HOST_LINK_GBS = {"gh200": 450.0}
HOST_COPY_EFFICIENCY = 0.8
"""Share of the link a pinned host<->device copy reaches: NVIDIA's cuda-samples `bandwidthTest`
(pinned, 32 MiB transfers) reads about 25-26 GB/s on PCIe Gen4 x16 (32 GB/s) and 12-13 GB/s on
Gen3 x16 (16 GB/s); the same fraction as HOST_LINK_GBS (25 GB/s) of planner/throughput.py."""


def host_link_gbs(gpu: GPU) -> float | None:
    """Per-direction GB/s (1e9 bytes) of pinned copies between this card and host memory (see
    above); None when the card's architecture is unknown."""
    link = _HOST_LINK_GBS.get(gpu.key) or _PCIE_GBS.get(gpu.arch)
    return None if link is None else link * HOST_COPY_EFFICIENCY


def bigger_cards(than_bytes: int, *, bf16: bool | None = None) -> list[GPU]:
    """Catalog cards with more memory than `than_bytes`, smallest (then cheapest) first."""
    cards = [g for g in GPUS if g.memory_bytes > than_bytes and (bf16 is None or g.bf16 == bf16)]
    return sorted(cards, key=lambda g: (g.memory_bytes, g.price_per_hour or 1e9))
