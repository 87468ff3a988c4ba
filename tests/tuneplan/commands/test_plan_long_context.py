"""`tuneplan plan --seq-len max` and the long-context knobs through the real CLI
(docs/long-context.md). The published maxima (Unsloth's table, issue 20) are lower bounds the
planner's own search must reach; nothing here is a stored result."""

from __future__ import annotations

import argparse

import pytest

from fake_nvml import FakeNVML, gpu_device
from plan_cli import run, run_json
from tuneplan.services import gpu as gpu_service

GiB = 1024**3
QLORA_R32 = ("--method", "qlora", "--lora-r", "32", "--lora-targets", "all-linear", "--batch", "1")




@pytest.mark.parametrize("model, published", [("llama-3.1-8b", 342_733), ("llama-3.1-70b", 89_389)])
def test_seq_len_max_on_an_a100_80gb(capsys, model, published):
    code, data, err = run_json(capsys, "--model", model, "--gpu", "a100-80gb", *QLORA_R32, "--seq-len", "max")
    assert code == 0 and data["fits"] is True
    c, m = data["config"], data["memory"]
    assert m["device_bytes"] <= m["budget_bytes"] and m["safety_margin"] == pytest.approx(0.09)
    assert c["offload_activations"] is True and c["tiled_mlp"] is True and c["packing"] is False
    assert c["chunked_norm"] is True
    assert c["seq_len"] >= published  # Unsloth's table, within the default margin
    # the host RAM is stated: every layer input of the sequence, in bf16, at least
    layers = 32 if model.endswith("8b") else 80
    hidden = 4096 if model.endswith("8b") else 8192
    assert m["host_activation_bytes"] >= layers * c["seq_len"] * hidden * 2
    assert m["host_ram_bytes"] is None  # a catalog card: not this machine's RAM
    assert any("pinned host RAM" in r for r in data["reasons"])
    assert "fits:" in err
    # the chunked RMSNorm closes the gap: the transformers norm stops short of the published maximum
    code, plain, _ = run_json(capsys, "--model", model, "--gpu", "a100-80gb", *QLORA_R32, "--seq-len", "max",
                              "--chunked-norm", "off")
    assert code == 0 and plain["config"]["chunked_norm"] is False and plain["config"]["seq_len"] < published


def test_seq_len_max_table_shows_the_knobs_and_their_cost(capsys):
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", *QLORA_R32, "--seq-len", "max")
    assert code == 0
    assert "solver (max)" in out
    assert "activation offload" in out and "pinned host RAM" in out
    assert "tiled MLP" in out and "shards of" in out
    assert "chunked norm" in out and "chunks of" in out
    assert "per micro-batch" in out  # the time the long context costs
    assert "RoPE scaling" in err  # past the model's 131072-token context


def test_seq_len_max_on_48_gib(capsys):
    """Unsloth's 12,106 tokens for a 70B on 48 GB, within the default margin: the frozen 4-bit
    weights, the 16-bit head and the adapters leave a few GiB, and the input embedding table goes to
    host RAM; with the table kept on the card the search stops short."""
    code, default, _ = run_json(capsys, "--model", "llama-3.1-70b", "--vram", "48GiB", *QLORA_R32, "--seq-len", "max")
    assert code == 0 and default["fits"] and default["config"]["offload_embedding"]
    assert default["config"]["seq_len"] >= 12_106
    mem = default["memory"]
    assert mem["host_embedding_bytes"] > 0 and mem["host_activation_bytes"] > 0
    assert mem["host_activation_bytes"] < mem["host_bytes"] < mem["host_activation_bytes"] + mem["host_embedding_bytes"]
    code, kept, _ = run_json(capsys, "--model", "llama-3.1-70b", "--vram", "48GiB", *QLORA_R32, "--seq-len", "max",
                             "--offload-embedding", "off")
    assert code == 0 and kept["fits"] and not kept["config"]["offload_embedding"]
    assert kept["config"]["seq_len"] < 12_106
    assert default["command"].count("--offload-embedding on") == 1


def test_a_plan_without_the_host_ram_for_its_offload_says_how_much_it_needs(capsys):
    argv = ("--model", "llama-3.1-8b", "--gpu", "rtx-4090", *QLORA_R32, "--seq-len", "65536")
    code, data, _ = run_json(capsys, *argv)
    need = data["memory"]["host_activation_bytes"]
    assert code == 0 and data["config"]["offload_activations"] and need > 8 * GiB
    code, out, err = run(capsys, *argv, "--host-ram", "8GiB")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "host RAM" in lines[0] and f"{need / GiB:.1f} GiB" in lines[0]
    assert "8.0 GiB available" in lines[0]


def test_planning_for_this_machine_checks_its_ram(capsys, monkeypatch):
    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML(
        [gpu_device("NVIDIA A100-SXM4-80GB", 81920, cc=(8, 0))])))
    monkeypatch.setattr(gpu_service, "ram_bytes", lambda: (64 * GiB, 48 * GiB))
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", *QLORA_R32, "--seq-len", "max")
    assert code == 0 and data["memory"]["host_ram_bytes"] == 48 * GiB
    assert 0 < data["memory"]["host_bytes"] <= 48 * GiB
    # the RAM bounds the answer: with it unbounded (--gpu: a named card, RAM unchecked) the search goes
    # further; with 48 GiB the longest is the one that keeps the layer inputs on the card
    code, unbounded, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", *QLORA_R32, "--seq-len", "max")
    assert code == 0 and data["config"]["seq_len"] < unbounded["config"]["seq_len"]


def test_long_context_knobs_are_flags_and_bad_combinations_are_one_line(capsys):
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--tiled-mlp", "on",
                             "--offload-activations", "on")
    assert code == 0 and data["config"]["tiled_mlp"] and data["config"]["offload_activations"]
    assert {"tiled_mlp", "offload_activations"} <= set(data["fixed"])
    # offloading moves the checkpointed layer inputs: the plan checkpoints, as the trainer does
    assert data["config"]["grad_checkpointing"]
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--offload-activations", "on",
                         "--grad-checkpointing", "off")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "checkpointing" in err
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--tiled-mlp", "maybe")
    assert code == 2 and "--tiled-mlp must be auto, on or off" in err
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--seq-len", "longest")
    assert code == 2 and "--seq-len" in err


def test_normal_plans_leave_the_long_context_knobs_off(capsys):
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "rtx-4090")
    assert code == 0 and not data["config"]["offload_activations"] and not data["config"]["tiled_mlp"]
    assert data["memory"]["host_activation_bytes"] == 0
    code, out, _ = run(capsys, "--model", "llama-3.1-8b", "--gpu", "rtx-4090")
    assert "activation offload" not in out and "tiled MLP" not in out


def test_train_takes_seq_len_max_as_the_planner_s_search():
    from tuneplan.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    given = train.given_setup(parser.parse_args(["--model", "m", "--dataset", "d", "--seq-len", "max"]))
    assert given.longest() and "seq_len" in given.auto() and "seq_len" not in given.fixed()
    fixed = train.given_setup(parser.parse_args(["--model", "m", "--dataset", "d", "--seq-len", "4096"]))
    assert not fixed.longest() and fixed.fixed()["seq_len"] == 4096


def test_the_command_a_seq_len_max_plan_prints_plans_the_same_length(capsys):
    """`--seq-len max` may answer past the model's context (Unsloth's 342,733 tokens on the 8B are);
    the `tuneplan train` line it prints carries that length, and planning it again gives it back
    (an explicit length past the context is planned as asked, with the RoPE-scaling warning)."""
    import shlex

    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", *QLORA_R32, "--seq-len", "max")
    seq = data["config"]["seq_len"]
    assert code == 0 and seq > data["model"]["context_length"]
    argv = shlex.split(data["command"])[2:]  # drop `tuneplan train`
    keep = []
    skip = {"--dataset", "--epochs", "--lr"}
    it = iter(argv)
    for a in it:
        if a in skip:
            next(it)
        else:
            keep.append(a)
    code, again, err = run_json(capsys, *keep)
    assert code == 0 and again["config"]["seq_len"] == seq
    assert again["config"] == data["config"]
    assert "RoPE scaling" in err
