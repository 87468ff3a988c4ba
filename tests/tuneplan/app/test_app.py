"""The application layer: one way to plan, prepare and find runs for the CLI and the wizard
(real services; fakes only at the NVML boundary)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from fake_nvml import FakeNVML, gpu_device
from tuneplan import app
from tuneplan.commands import plan as plan_cmd
from tuneplan.commands import train
from tuneplan.errors import UserError
from tuneplan.knobs import PartialSetup
from tuneplan.services import gpu as gpu_service

RUNS = Path(__file__).resolve().parents[2] / "data" / "runs"


def _train_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(list(argv))


def _plan_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    plan_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_plan_and_train_make_the_same_plan_request():
    """The flags `plan` and `train` share become the same planning request (one split of the
    knobs into method, GPUs and fixed knobs), so both plan alike."""
    flags = ("--model", "llama-3.1-8b", "--gpu", "rtx-4090", "--method", "lora", "--batch", "2",
             "--effective-batch", "32", "--safety-margin", "0.2", "--gpus", "1")
    from_plan = app.plan_request(plan_cmd.build_request(_plan_args(*flags)))
    from_train = app.plan_request(train.run_request(_train_args(*flags, "--dataset", "d.jsonl")))
    for field in ("model", "gpu", "method", "fixed", "effective_batch", "safety_margin", "gpus", "strategy"):
        assert getattr(from_plan, field) == getattr(from_train, field), field
    assert from_plan.fixed == {"micro_batch": 2} and from_plan.gpus == 1 and from_plan.method == "lora"


def test_train_plans_with_effective_batch_and_safety_margin():
    """`train --effective-batch` keeps that many sequences per optimizer step; `--safety-margin`
    leaves that much free: the planned configuration follows both."""
    from tuneplan.data import SAMPLE_CHAT

    args = _train_args("--model", "llama-3.1-8b", "--dataset", str(SAMPLE_CHAT), "--gpu", "rtx-4090",
                       "--effective-batch", "48", "--safety-margin", "0.3", "--force")
    config, notes = train.plan_config(*train.build(args), args)
    assert config.setup.effective_batch() == 48
    outcome = app.plan(train.run_request(args))
    assert outcome.request.safety_margin == 0.3
    assert outcome.result.budget_bytes == int(outcome.result.usable_bytes * 0.7)
    assert config.prediction.device_bytes <= outcome.result.budget_bytes


@pytest.mark.parametrize("argv, message", [
    (("--safety-margin", "-1"), "--safety-margin must be >= 0"),
    (("--effective-batch", "0"), "--effective-batch must be > 0"),
    (("--gpu-index", "x"), "--gpu-index must be a whole number"),
    (("--gpu-index", "0", "--gpu", "4090"), "--gpu-index picks an NVML GPU"),
])
def test_train_reads_plan_only_inputs_as_plan_does(argv, message):
    """The same readers, the same one-line messages, in `plan` and in `train`."""
    with pytest.raises(UserError, match=message):
        plan_cmd.build_request(_plan_args("--model", "m", *argv))
    with pytest.raises(UserError, match=message):
        train.run_request(_train_args("--model", "m", "--dataset", "d", *argv))


def test_train_gpu_index_plans_for_that_gpu(monkeypatch):
    """`train --gpu-index 1` plans for NVML's GPU 1 (not the one with most free memory)."""
    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML([
        gpu_device("NVIDIA GeForce RTX 4090", 24564, used_mib=300),
        gpu_device("NVIDIA GeForce RTX 3060", 12288, used_mib=2000)])))
    args = _train_args("--model", "llama-3.1-8b", "--dataset", "tuneplan:sample-chat", "--gpu-index", "1")
    config, notes = train.plan_config(*train.build(args), args)
    assert any("GPU 1 (NVIDIA GeForce RTX 3060)" in n for n in notes)
    assert config.prediction.device_bytes < 10.05 * 2**30  # what the 3060 has free
    seven = _train_args("--model", "llama-3.1-8b", "--dataset", "d", "--gpu-index", "7")
    with pytest.raises(UserError, match="--gpu-index 7: NVML sees GPUs 0, 1"):
        train.plan_config(*train.build(seven), seven)


def test_a_card_named_to_train_on_is_one_card_unless_gpus_says_more():
    """A run trains on what it names: `--gpu` alone is one such card; `--gpus 2` is two (the
    planner gets the count, as `tuneplan plan --gpus 2` does)."""
    one = app.plan_request(app.RunRequest(model="m", target=app.Target(gpu="a100-80gb"), one_gpu=True))
    assert one.gpus == 1 and "num_gpus" not in one.fixed
    two = app.plan_request(app.RunRequest(model="m", target=app.Target(gpu="a100-80gb"), one_gpu=True,
                                          setup=PartialSetup({"num_gpus": 2, "strategy": "fsdp"})))
    assert (two.gpus, two.strategy) == (2, "fsdp") and not two.fixed
    single = app.plan_request(app.RunRequest(model="m", setup=PartialSetup({"strategy": "single"})))
    assert (single.gpus, single.strategy) == (1, "auto")  # what a run config holds for one GPU


def test_resolve_model_and_hardware_take_their_own_arguments():
    assert app.resolve_model("llama-3.1-8b").spec.model_type == "llama"
    hw, notes, found = app.resolve_hardware(gpu="rtx-4090")
    assert hw.gpu.key == "rtx-4090" and hw.source == "catalog" and found == 0
    hw, notes, _ = app.resolve_hardware(vram=16 * 2**30)
    assert hw.usable_bytes() == 16 * 2**30 and "add --gpu NAME" in notes[0]


def test_find_run_by_name_by_folder_and_newest(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(UserError, match="no runs in"):
        app.find_run(None, root)
    shutil.copytree(RUNS / "tiny-done", root / "tiny-done")
    assert app.find_run("tiny-done", root) == root / "tiny-done"
    assert app.find_run(None, root) == root / "tiny-done"
    assert app.find_run(str(root / "tiny-done"), tmp_path / "elsewhere") == (root / "tiny-done").resolve()


def test_the_package_imports_no_textual_and_no_torch():
    """The use cases are headless: importing them loads neither the UI toolkit nor torch."""
    import subprocess
    import sys

    code = ("import sys, tuneplan.app; bad = [m for m in ('textual', 'torch', 'transformers') if m in sys.modules];"
            " print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_with_gpus_plans_that_many_cards():
    """`train --gpu a100-80gb --gpus 2 --strategy fsdp` plans for two such cards (the old train
    path let its own one-card default win over --gpus, and planned one GPU with FSDP)."""
    from tuneplan.data import SAMPLE_CHAT

    args = _train_args("--model", "llama-3.1-70b", "--dataset", str(SAMPLE_CHAT), "--gpu", "a100-80gb", "--force",
                       "--gpus", "2", "--strategy", "fsdp")
    config, notes = train.plan_config(*train.build(args), args)
    assert (config.setup.num_gpus, config.setup.strategy) == (2, "fsdp")
    one = _train_args("--model", "llama-3.1-70b", "--dataset", str(SAMPLE_CHAT), "--gpu", "a100-80gb", "--force")
    assert train.plan_config(*train.build(one), one)[0].setup.num_gpus == 1
