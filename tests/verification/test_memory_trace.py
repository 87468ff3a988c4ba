"""The memory trace itself (verification/memory_trace.py): on fake tensors it measures exactly
what the real CPU step of the same small model measures, so the full-size fake traces
(bench/bench_trace_meta.py, bench/bench_trace_cuda.py) stand for real steps.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from trace_models import FAMILIES, SMALL_SETUP, case_id, few_threads  # noqa: E402, F401  (autouse fixture)

_S = SMALL_SETUP

FAKE_CASES = [("llama", replace(_S, method="lora")), ("llama", replace(_S, method="qlora", fused_ce=True)),
              ("gemma2", replace(_S, method="qlora", micro_batch=1)), ("mixtral", replace(_S, method="lora")),
              # the host embedding on the CPU: the table moves to the same memory, as a plain tensor
              ("llama", replace(_S, method="lora", offload_embedding=True))]


@pytest.mark.slow
@pytest.mark.parametrize("family,setup", FAKE_CASES, ids=[case_id(f, s) for f, s in FAKE_CASES])
def test_fake_trace_equals_cpu_trace(family, setup):
    from tuneplan.training.modeling import build_from_config
    from tuneplan.training.memory_tracker import simple_tokenizer
    from verification.memory_trace import trace_fake, trace_training

    cfg = FAMILIES[family]
    fake = trace_fake(cfg, setup)
    model, _ = build_from_config(cfg, setup)
    real = trace_training(model, simple_tokenizer(cfg["vocab_size"]), setup)
    assert fake.peak_bytes == real.peak_bytes
    assert fake.peak_where == real.peak_where
    assert fake.static == real.static
    assert fake.phases == real.phases  # every phase's peak, by category
    assert fake.marks == real.marks
