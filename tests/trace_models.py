"""The small models of the memory-trace tests (tests/planner/test_trace_*.py, tests/verification/).

One config per supported family (random weights, two layers), two other geometries, the
setup the cases vary, a case's name, and the one-thread fixture the traces run under.
"""

from __future__ import annotations

import pytest

from planner.setup import TrainSetup

_BASE = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
FAMILIES = {
    "llama": dict(model_type="llama", **_BASE),
    "mistral": dict(model_type="mistral", **_BASE, sliding_window=None),
    "mixtral": dict(model_type="mixtral", **_BASE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": dict(model_type="qwen2", **_BASE),
    "qwen3": dict(model_type="qwen3", **_BASE, head_dim=32),
    "qwen3_moe": dict(model_type="qwen3_moe", **_BASE, head_dim=32, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=256, decoder_sparse_step=1, mlp_only_layers=[]),
    "gemma2": dict(model_type="gemma2", **_BASE, head_dim=32),
    "gemma3_text": dict(model_type="gemma3_text", **_BASE, head_dim=32),
    "phi3": dict(model_type="phi3", **_BASE, pad_token_id=0),
}
# Other geometry, so the formulas are not only right at one shape: wider, GQA 4:1, 3 layers and
# a 32k vocabulary (Llama-2 / Mistral size); tied embeddings with q/k/v biases (Qwen2.5 small).
SHAPES = {
    "llama_wide": dict(model_type="llama", vocab_size=32000, hidden_size=512, intermediate_size=1376,
                       num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                       max_position_embeddings=4096),
    "qwen2_tied": dict(model_type="qwen2", vocab_size=8192, hidden_size=384, intermediate_size=1024,
                       num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                       tie_word_embeddings=True, max_position_embeddings=4096),
}
FAMILIES.update(SHAPES)

SMALL_SETUP = TrainSetup(seq_len=128, micro_batch=2, lora_rank=16, packing=False, optimizer="adamw")
"""The setup the trace cases vary (two sequences of 128 tokens, rank 16)."""


def case_id(family: str, s: TrainSetup) -> str:
    t = s.lora_targets if isinstance(s.lora_targets, str) else "+".join(s.lora_targets)
    extra = "".join(["-packed" if s.packing else "", "-fusedce" if s.fused_ce else "",
                     f"-{s.optimizer}" if s.optimizer != "adamw" else "",
                     "-hostemb" if getattr(s, "offload_embedding", False) else ""])
    return (f"{family}-{s.method}-b{s.micro_batch}-s{s.seq_len}-r{s.lora_rank}-{t}"
            f"-{'ckpt' if s.grad_checkpointing else 'nockpt'}{extra}")


@pytest.fixture(autouse=True)
def few_threads():
    """One torch thread while a trace runs (a test module imports it to use it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
