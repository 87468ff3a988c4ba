"""The launcher's pre-flight arithmetic: the disk a run writes, from the planner's count."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.setup import TrainSetup
from planner.throughput import trainable_parameters
from tuneplan.config import ModelConfig, RunConfig
from tuneplan.services import launcher


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen3-30b-a3b", "llama-3.1-8b"])
def test_disk_check_counts_the_trainable_parameters_as_the_planner_does(name):
    """One count: a fused MoE expert tensor's adapter has twice the rank on gate_up (peft's
    `lora_rank_factor`), which a plain r x (in + out) sum misses (Mixtral: 225M instead of 360M,
    a disk check 37% low)."""
    setup = TrainSetup(method="lora", lora_rank=16)
    config = RunConfig(model=ModelConfig(source=name), setup=setup)
    cfg = launcher.model_config_dict(name)
    n = trainable_parameters(catalog.load_spec(name), setup)
    assert launcher._trainable_params(config, cfg) == n
    assert launcher.required_disk_bytes(config, cfg) == (launcher.checkpoint_bytes(n) * 3
                                                          + launcher.final_save_bytes(n, "lora")
                                                          + launcher.DISK_MARGIN_BYTES)
    spec = catalog.load_spec(name)
    plain = sum(m.count * 16 * (m.in_features + m.out_features) for layer in spec.layers for m in layer
                if m.lora_targetable)
    if any(getattr(m, "lora_rank_factor", 1) > 1 for layer in spec.layers for m in layer):
        assert n > plain  # the MoE models: the factor counts
