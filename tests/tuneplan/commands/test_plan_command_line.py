"""`tuneplan plan` says what to run next (issue 19, item 9): it ends with the `tuneplan train`
command of the plan, built by the one builder the wizard's Review screen uses, and `--json`
carries it as `command`."""

from __future__ import annotations

import json
import shlex

import pytest

from plan_cli import run
from tuneplan.cli import build_parser
from tuneplan.commands import train
from tuneplan.data import SAMPLE_CHAT



def _command_lines(out: str) -> str:
    """The command printed at the end of the plan, joined back from its ` \\` continuations."""
    tail = out.rsplit("Train this plan with:\n", 1)[1]
    lines = []
    for line in tail.splitlines():
        lines.append(line.rstrip(" \\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(lines)


def _reads_back_as(command: str, setup) -> None:
    """The real `train` parser reads `command` as exactly `setup`, with nothing left to plan."""
    argv = shlex.split(command)
    assert argv[:2] == ["tuneplan", "train"]
    given = train.given_setup(build_parser().parse_args(argv[1:]))
    assert given.auto() == []
    for knob, value in given.fixed().items():
        assert getattr(setup, knob) == value, knob


@pytest.mark.parametrize("argv", [
    ("--model", "llama-3.1-8b", "--gpu", "4090", "--dataset", str(SAMPLE_CHAT)),
    ("--model", "qwen2.5-72b", "--gpu", "h100", "--gpus", "8"),
    ("--model", "llama-3.1-8b", "--vram", "12GiB", "--method", "qlora"),
])
@pytest.mark.parametrize("columns", [None, "80"])
def test_plan_ends_with_the_train_command_and_json_carries_it(capsys, monkeypatch, argv, columns):
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    code, out, _ = run(capsys, *argv)
    if columns:
        assert all(len(line) <= 80 for line in out.rsplit("Train this plan with:", 1)[1].splitlines()), out
    assert code == 0
    code, data, _ = (lambda c, o, e: (c, json.loads(o), e))(*run(capsys, *argv, "--json"))
    command = data["command"]
    _reads_back_as(command, _setup(data))
    assert _command_lines(out) == command
    # the command is the last thing the plan prints (a note about a placeholder dataset may follow)
    after = out.rsplit(command.split()[-1], 1)[1]
    assert after.strip() == "" or after.strip().startswith("(YOUR_DATA.jsonl")
    target = argv[argv.index("--gpu") + 1] if "--gpu" in argv else None
    if target:
        assert "--gpu " in command
    if "--vram" in argv:
        assert "--vram 12GiB" in command
    assert ("--dataset YOUR_DATA.jsonl" in command) == ("--dataset" not in argv)


def _setup(data):
    from planner.setup import TrainSetup

    c = {k: v for k, v in data["config"].items() if k in TrainSetup.__dataclass_fields__}
    if isinstance(c.get("lora_targets"), list):
        c["lora_targets"] = tuple(c["lora_targets"])
    return TrainSetup(**c)


def test_plan_that_does_not_fit_has_no_command(capsys):
    code, out, _ = run(capsys, "--model", "llama-3.3-70b", "--vram", "8GiB", "--method", "lora", "--gpus", "1",
                       "--json")
    assert code == 1 and json.loads(out)["command"] is None


def test_the_wizard_and_plan_share_one_builder(tmp_path):
    """The Review screen's "Equivalent command" is the plan CLI's builder (not a second copy)."""
    from planner.setup import TrainSetup
    from tuneplan.config import DataConfig, ModelConfig, RunConfig
    from tuneplan.services import command_line
    from tuneplan.ui.adapters import RunsAdapter
    from tuneplan.ui.target import dry_run_target

    config = RunConfig(model=ModelConfig(source="llama-3.1-8b"), data=DataConfig(source="d.jsonl"),
                       setup=TrainSetup(method="qlora", micro_batch=2, grad_accum=8))
    runs = RunsAdapter(tmp_path / "runs")
    assert runs.train_command(config, dry_run_target("l40")) == command_line.train_command(config, ["--gpu", "l40"])
    assert runs.train_command(config) == command_line.train_command(config)


def test_wrapped_command_fits_the_width_and_pastes_as_one():
    from tuneplan.services.command_line import wrap_command

    parts = ["tuneplan", "train", "--model", "llama-3.1-8b", "--dataset", "my data.jsonl", "--method", "lora",
             "--seq-len", "2048", "--batch", "2", "--grad-accum", "8", "--lora-targets", "all-linear"]
    text = wrap_command(parts, 40)
    assert all(len(line) <= 40 for line in text.splitlines())
    assert shlex.split(text.replace("\\\n", " ")) == parts
    assert "--seq-len 2048" in text  # a flag stays with its value


def test_preset_refit_carries_its_train_command(capsys):
    code, out, err = run(capsys, "--preset", "llama-3.1-8b-lora-24gb", "--gpu", "rtx-3060-12gb", "--json")
    assert code == 0
    command = json.loads(out)["command"]
    assert command == "tuneplan train --preset llama-3.1-8b-lora-24gb --gpu rtx-3060-12gb"
    assert command in " ".join(err.split())


def test_bundled_tiny_model_is_planned_for_the_cpu_without_a_gpu(capsys, monkeypatch):
    """`plan --model tuneplan:tiny` on a machine without a GPU plans the CPU, as `train` runs it
    there (it used to ask for --gpu), in float32, and ends with the command that trains it here."""
    from fake_nvml import FakeNVML, NVMLError
    from tuneplan.services import gpu as gpu_service

    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(
        nvml=FakeNVML([], init_error=NVMLError("NVML Shared Library Not Found"))))
    code, out, err = run(capsys, "--model", "tuneplan:tiny", "--json")
    data = json.loads(out)
    assert code == 0 and data["gpu"]["source"] == "cpu" and data["config"]["compute_dtype"] == "float32"
    assert "--compute-dtype float32" in data["command"] and "--gpu" not in data["command"]
    code, _, err = run(capsys, "--model", "llama-3.1-8b")
    assert code == 2 and "no GPU to plan for" in err  # any other model still needs a card


def test_probe_advice_commands_start_as_the_probe_was_given(tmp_path):
    """A preset probe's advice applies the change over the preset; a --config probe's is the run
    in full (the wizard probes a config written to a temporary file, gone once read)."""
    import argparse
    from dataclasses import replace

    from planner.setup import TrainSetup
    from tuneplan.commands import probe
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config

    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    setup = TrainSetup(method="full", micro_batch=8, grad_accum=1, seq_len=128, compute_dtype="float32")
    bigger = replace(setup, micro_batch=32)
    apply = probe._apply(parser.parse_args(["--preset", "tiny-cpu"]), setup, None)
    assert apply(bigger) == "tuneplan train --preset tiny-cpu --batch 32"
    path = tmp_path / "config.toml"
    save_config(RunConfig(model=ModelConfig(source="tuneplan:tiny"), data=DataConfig(source="d.jsonl"), setup=setup),
                path)
    command = probe._apply(parser.parse_args(["--config", str(path)]), setup, None)(bigger)
    assert str(path) not in command
    _reads_back_as(command, bigger)
