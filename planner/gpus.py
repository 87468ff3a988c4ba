"""The GPU catalog: memory, bf16 support, dense bf16 TFLOP/s, bandwidth, typical price.

(The planner issue fills this to 25+ cards with sources; this holds the shape.)
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    """One GPU model. Sizes in bytes, rates per second."""

    key: str
    """Catalog key, e.g. `rtx-4090`, `a100-80gb`."""
    name: str
    """Display name, e.g. `NVIDIA GeForce RTX 4090`."""
    memory_bytes: int
    bf16: bool
    arch: str
    """`turing`, `ampere`, `ada`, `hopper`, `blackwell`: decides kernels and workspace sizes."""
    bf16_tflops: float | None = None
    """Dense bf16 (fp16 where no bf16) tensor TFLOP/s, no sparsity."""
    bandwidth_gbs: float | None = None
    """Memory bandwidth in GB/s (1e9 bytes)."""
    price_per_hour: float | None = None
    """Typical on-demand USD per GPU-hour (see PRICES_AS_OF)."""
    interconnect: str = "pcie"
    """`pcie` or `nvlink` between GPUs of this model in one box."""
