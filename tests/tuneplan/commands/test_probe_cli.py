"""`tuneplan probe` through the real CLI: a real tiny run on the CPU, offline."""

from __future__ import annotations

import json
import shutil

import pytest

from tuneplan import cli
from tuneplan.data import TINY_MODEL_CONFIG
from tuneplan.services import presets as P
from tuneplan.services import probing


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNEPLAN_PRESETS_DIR", str(tmp_path / "user-presets"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def probe(capsys, *argv):
    try:
        code = cli.main(["probe", *argv])
    except SystemExit as stop:  # argparse refuses a flag value before the command runs
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_preset_tiny_cpu_prints_predicted_vs_measured_with_advice_and_saves_evidence(env, capsys):
    # a user copy of the shipped preset (evidence is never written into a shipped file)
    (env / "user-presets").mkdir()
    shutil.copy(P.find_preset("tiny-cpu").path, env / "user-presets" / "tiny-cpu.toml")
    code, out, err = probe(capsys, "--preset", "tiny-cpu", "--save-evidence", "tiny-cpu")
    assert code == 0, err
    assert "predicted" in out and "measured" in out and "error" in out
    assert "torch peak (live tensors)" in out and "CPU RSS" in out and "not GPU memory" in out
    assert "Advice:" in out and "Headroom" in out  # the tiny model leaves the RAM almost empty
    data = json.loads((env / "probe.json").read_text())
    m = data["measured"]
    assert m["device"] == "cpu" and m["steps"] == 3 and m["warmup_steps"] == 1 and m["peak_step"] == 2
    assert m["torch_peak_bytes"] > 0 and m["process_bytes"] > m["torch_peak_bytes"]
    assert m["tokens_per_second"] > 0 and m["step_seconds"] > 0 and len(m["step_times"]) == 4
    # the CPU prediction of the planner is the live-tensor count of this very step
    assert data["predicted"]["torch_peak_bytes"] > 0 and abs(data["errors"]["torch_peak"]) < 0.05
    assert data["advice"] and data["config"]["method"] == "full"
    # the evidence went into the preset, and reads back
    saved = P.find_preset("tiny-cpu")
    assert saved.origin == "user" and saved.evidence is not None
    assert saved.evidence.outcome == "probe" and saved.evidence.peak_memory_bytes == m["torch_peak_bytes"]
    assert saved.config.setup.micro_batch == 8  # the rest of the file is untouched
    # never silently over evidence already there
    report = _report(data)
    before = saved.path.read_text()
    with pytest.raises(probing.UserError, match="already holds"):
        probing.save_evidence("tiny-cpu", report)
    assert saved.path.read_text() == before
    probing.save_evidence("tiny-cpu", report, force=True)
    assert P.find_preset("tiny-cpu").path.read_text().count("[evidence]") == 1


def _report(data) -> probing.ProbeReport:
    from planner.setup import TrainSetup

    return probing.ProbeReport(model="tiny", random_weights=True, setup=TrainSetup(), hardware_name="cpu",
                               usable_bytes=1, safety_margin=0.08,
                               prediction=probing.Prediction(1, None, None, None, None), measured=data["measured"])


def test_random_weights_from_a_folder_with_only_config_json(env, capsys):
    folder = env / "tiny-config-only"
    folder.mkdir()
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")  # no weights, no tokenizer: nothing to load
    code, out, err = probe(capsys, "--model", str(folder), "--random-weights", "--method", "lora", "--seq-len", "64",
                           "--batch", "2", "--grad-accum", "1", "--steps", "1", "--out", "r.json")
    assert code == 0, err
    assert "(random weights)" in out and "LoRA r16, seq 64, micro-batch 2 x 1" in out
    data = json.loads((env / "r.json").read_text())
    assert data["random_weights"] is True and data["measured"]["torch_peak_bytes"] > 0
    assert any("random weights" in n for n in data["notes"])


def test_bad_input_is_one_line(env, capsys):
    code, _, err = probe(capsys, "--preset", "tiny-cpu", "--steps", "0")
    assert code == 2 and err.count("\n") == 1 and "--steps" in err and "whole number in [1," in err
    code, _, err = probe(capsys, "--preset", "tiny-cpu", "--warmup-steps", "-1")
    assert code == 2 and err.count("\n") == 1 and "--warmup-steps" in err and "in [0," in err
    code, _, err = probe(capsys, "--preset", "tiny-cpu", "--batch", "4")
    assert code == 2 and err.count("\n") == 1 and "--batch cannot be combined with --preset" in err
    code, _, err = probe(capsys, "--preset", "tiny-cpu", "--config", "run.toml")
    assert code == 2 and "either --config or --preset" in err
    code, _, err = probe(capsys, "--preset", "tiny-cpu", "--save-evidence", "tiny-cpu", "--steps", "x")
    assert code == 2 and "whole number" in err


def test_shipped_preset_refuses_evidence(env):
    report = _report({"measured": {"device": "cpu", "steps": 3}})
    with pytest.raises(probing.UserError, match="shipped"):
        probing.save_evidence("tiny-cpu", report)


def test_help_loads_no_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom tuneplan.cli import main\ntry:\n    main(['probe', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_gpu_index_0_names_the_first_nvml_gpu(monkeypatch):
    """On a CUDA machine `--gpu-index` picks the NVML GPU to predict for; 0 is the first one
    (the same reading as `tuneplan plan --gpu-index`)."""
    import argparse

    from fake_nvml import FakeNVML, gpu_device
    from tuneplan.commands import probe as probe_command
    from tuneplan.errors import UserError
    from tuneplan.services import gpu as gpu_service

    monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML(
        [gpu_device("NVIDIA GeForce RTX 4090", 24564), gpu_device("NVIDIA GeForce RTX 3060", 12288)])))
    for index, card in (("0", "4090"), ("1", "3060")):
        hardware, _ = probe_command._hardware(argparse.Namespace(gpu=None, vram=None, gpu_index=index), cuda=True)
        assert card in hardware.gpu.name
    for cuda in (True, False):  # with no GPU too: a bad value is refused, never ignored
        with pytest.raises(UserError, match="--gpu-index must be a whole number"):
            probe_command._hardware(argparse.Namespace(gpu=None, vram=None, gpu_index="x"), cuda=cuda)
