"""Out-of-memory errors, recognised once for the run's worker and for `tuneplan probe`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def oom_as_out_of_memory_error() -> Iterator[None]:
    """Re-raise a plain `RuntimeError` that says "out of memory" as `torch.OutOfMemoryError`:
    some CUDA paths (bitsandbytes' kernels, cuBLAS workspace allocation) raise the former."""
    import torch

    try:
        yield
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower() and not isinstance(exc, torch.OutOfMemoryError):
            raise torch.OutOfMemoryError(str(exc)) from exc
        raise


def first_line(exc: BaseException) -> str:
    """The first line of an out-of-memory error's message (CUDA's run to several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "out of memory"
