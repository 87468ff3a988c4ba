"""One source for each fact the plan and the run both state (issue 19, item 10): the CPU's
compute dtype, what a preset re-fit keeps under the user's flags, the default safety margin."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from fake_nvml import FakeNVML, NVMLError
from planner.gpus import CPU_COMPUTE_DTYPE
from planner.margins import DEFAULT_SAFETY_MARGIN
from tuneplan.commands import plan, train
from tuneplan.services import gpu as gpu_service
from tuneplan.services import machine

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(
        nvml=FakeNVML([], init_error=NVMLError("NVML Shared Library Not Found"))))


def _train_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cpu_plan_and_run_agree_on_the_dtype(no_gpu):
    """`train --model tuneplan:tiny` on a CPU: the plan is float32 (what the run computes in), so
    nothing says fp16 full fine-tuning 'the trainer refuses', and the launch changes nothing."""
    args = _train_args("--model", "tuneplan:tiny", "--dataset", "tuneplan:sample-chat")
    config, notes = train.plan_config(*train.build(args), args)
    text = "\n".join(notes)
    assert config.setup.compute_dtype == CPU_COMPUTE_DTYPE == machine.CPU_DTYPE
    assert "refuses" not in text and "fp16" not in text and "float16" not in text, text
    setup, note = machine.setup_for_this_machine(config.setup, 0)
    assert setup == config.setup and note is None


def test_asking_for_16_bit_on_the_cpu_is_said_once(no_gpu):
    args = _train_args("--model", "tuneplan:tiny", "--dataset", "tuneplan:sample-chat", "--compute-dtype", "bfloat16",
                       "--method", "full")
    config, notes = train.plan_config(*train.build(args), args)
    assert config.setup.compute_dtype == CPU_COMPUTE_DTYPE
    assert any("float32, not bfloat16" in n for n in notes), notes


def test_preset_refit_keeps_what_the_flags_set(no_gpu, capsys):
    """A flag over a preset is re-fitted with it: the summary's 'Kept: method ...' is the method
    the configuration trains, and the micro-batch given is the one the run uses."""
    args = _train_args("--preset", "tiny-cpu", "--method", "lora", "--batch", "4")
    config, given = train.build(args)
    err = capsys.readouterr().err
    assert config.setup.method == "lora" and config.setup.micro_batch == 4
    kept = next(line for line in err.splitlines() if "Kept:" in line)
    assert "method LoRA" in kept and "full fine-tuning" not in kept, err
    assert "--method lora" in err and "--batch 4" in err
    # a flag over a file sets that knob alone: --batch 4 with the preset's accumulation (1)
    assert config.setup.grad_accum == 1 and "effective batch 4" in kept


def _stated_defaults(text: str) -> list[str]:
    """Every 'default X' said within a sentence of `--safety-margin` / 'safety margin'."""
    found = []
    for m in re.finditer(r"safety[- ]margin", text):
        window = text[m.end():m.end() + 160]
        d = re.search(r"default:? ([0-9.]+\d)", window)
        if d:
            found.append(d.group(1))
    return found


def test_the_default_safety_margin_is_said_as_the_planner_uses_it():
    """README and docs say the margin the planner uses (planner/margins.py), and so does --help."""
    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert _stated_defaults(help_text) == [f"{DEFAULT_SAFETY_MARGIN:g}"]
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    said = {str(p.relative_to(ROOT)): _stated_defaults(" ".join(p.read_text().split())) for p in docs}
    assert any(said.values()), "the README no longer states the default margin: drop or adapt this test"
    for path, values in said.items():
        assert all(float(v) == DEFAULT_SAFETY_MARGIN for v in values), f"{path} says default {values}"
