"""`tuneplan train` flags -> run configuration (no training)."""

from __future__ import annotations

import argparse

import pytest

from planner.setup import ALL_LINEAR
from tuneplan.commands import train
from tuneplan.errors import UserError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_fix_knobs_and_hyperparameters():
    args = _args("--model", "/m", "--dataset", "d.jsonl", "--method", "qlora", "--batch", "2", "--grad-accum", "8",
                 "--seq-len", "1024", "--lora-r", "32", "--lora-targets", "attention", "--grad-checkpointing", "off",
                 "--fused-ce", "on", "--optimizer", "paged-adamw-8bit", "--lr", "1e-4", "--max-steps", "50",
                 "--allow-qlora", "--max-retries", "1", "--name", "r1")
    config, given = train.build(args)
    s = config.setup
    assert (s.method, s.micro_batch, s.grad_accum, s.seq_len, s.lora_rank) == ("qlora", 2, 8, 1024, 32)
    assert s.lora_targets == "attention" and s.grad_checkpointing is False and s.fused_ce is True
    assert s.optimizer == "paged-adamw-8bit"
    assert (config.training.learning_rate, config.training.max_steps) == (1e-4, 50)
    assert config.recovery.allow_qlora and config.recovery.max_retries == 1 and config.name == "r1"
    assert set(given.auto()) == {"attn", "packing", "compute_dtype", "offload_activations", "tiled_mlp",
                                  "chunked_norm", "offload_embedding"}


def test_knobs_left_out_go_to_the_planner_and_file_knobs_stay_fixed(tmp_path):
    from tuneplan.knobs import PLANNED

    assert set(train.given_setup(_args("--model", "m", "--dataset", "d")).auto()) == set(PLANNED)
    path = tmp_path / "run.toml"
    path.write_text('[model]\nsource = "/m"\n[data]\nsource = "d.jsonl"\n[setup]\nmethod = "lora"\nmicro_batch = 4\n')
    args = _args("--config", str(path), "--lora-targets", "q_proj,v_proj", "--attn", "auto")
    config, given = train.build(args)  # the file is read once: its [setup] keys are the fixed knobs
    assert "method" not in given.auto() and "micro_batch" not in given.auto()
    assert "attn" in given.auto()
    assert config.setup.lora_targets == ("q_proj", "v_proj")
    assert train.build_config(_args("--config", str(path), "--lora-targets", "all-linear")).setup.lora_targets \
        == ALL_LINEAR


def test_attention_targets_resolve_to_the_models_own_projections():
    """`attention` stays the group the planner resolves per model: phi-3 has one fused qkv_proj,
    so spelling it out as q/k/v/o names (which phi-3 lacks) must not happen on the train path."""
    args = _args("--model", "phi-3-mini", "--dataset", "tuneplan:sample-chat", "--lora-targets", "attention",
                 "--gpu", "rtx-4090", "--method", "lora")
    config, notes = train.plan_config(*train.build(args), args)
    assert config.setup.lora_targets == "attention"
    from planner.spec import resolve_lora_targets
    from tuneplan.app import resolve_model

    spec = resolve_model("phi-3-mini").spec
    adapted = {m.name for layer in resolve_lora_targets(spec, config.setup.lora_targets) for m in layer}
    assert adapted == {"qkv_proj", "o_proj"}


@pytest.mark.parametrize("argv, message", [
    (("--dataset", "d.jsonl"), "no model"),
    (("--model", "m"), "no dataset"),
    (("--config", "a.toml", "--preset", "p"), "either --config or --preset"),
])
def test_missing_or_contradictory_sources(argv, message):
    with pytest.raises(UserError, match=message):
        train.build_config(_args(*argv))
