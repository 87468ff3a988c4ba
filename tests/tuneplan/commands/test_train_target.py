"""`tuneplan train` checks this machine before launching: the --gpu / --vram target against
what NVML finds (faked only at the pynvml boundary), and a gated model's Hub access (faked only
at huggingface_hub's functions). A refusal is one line and leaves no run behind."""

from __future__ import annotations

import huggingface_hub
import httpx2
import pytest
from huggingface_hub import errors as hub_errors

from fake_nvml import FakeNVML, NVMLError, gpu_device
from tuneplan import cli
from tuneplan.config import load_config
from tuneplan.data import SAMPLE_CHAT
from tuneplan.services import gpu as gpu_service



@pytest.fixture
def nvml(monkeypatch):
    def install(devices=(), fail=False):
        monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML(
            [gpu_device(*d) for d in devices],
            init_error=NVMLError("NVML Shared Library Not Found") if fail else None)))
    return install


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def train(capsys, runs_root, *argv):
    code = cli.main(["train", "--dataset", str(SAMPLE_CHAT), "--runs-dir", str(runs_root), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_refusal(code, err, runs_root):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuneplan: error:"), err
    assert not any(runs_root.iterdir()), "a refused launch must not create a run"
    return lines[0]


@pytest.mark.parametrize("target", [["--gpu", "4090"], ["--vram", "24GiB"]])
def test_target_not_on_a_machine_without_gpu_is_refused(capsys, nvml, runs_root, target):
    nvml(fail=True)
    code, _, err = train(capsys, runs_root, "--model", "llama-3.1-8b", *target)
    line = _one_line_refusal(code, err, runs_root)
    assert " ".join(target) in line and "no NVIDIA GPU" in line and "--force" in line


def test_other_card_than_the_one_named_is_refused(capsys, nvml, runs_root):
    nvml([("NVIDIA GeForce RTX 3060", 12288)])
    code, _, err = train(capsys, runs_root, "--model", "llama-3.1-8b", "--gpu", "4090")
    line = _one_line_refusal(code, err, runs_root)
    assert "RTX 3060" in line and "RTX 4090" in line


def test_more_vram_than_the_gpus_here_is_refused(capsys, nvml, runs_root):
    nvml([("NVIDIA GeForce RTX 3060", 12288)])
    code, _, err = train(capsys, runs_root, "--model", "llama-3.1-8b", "--vram", "24GiB")
    line = _one_line_refusal(code, err, runs_root)
    assert "12.0 GiB" in line


def test_gated_model_without_token_is_refused_before_launch(capsys, nvml, runs_root, no_token):
    nvml([("NVIDIA GeForce RTX 4090", 24564)])  # the card named is here: the Hub check decides
    code, _, err = train(capsys, runs_root, "--model", "llama-3.1-8b", "--gpu", "4090")
    line = _one_line_refusal(code, err, runs_root)
    assert "gated" in line and "HF_TOKEN" in line and "https://huggingface.co/meta-llama/Llama-3.1-8B" in line


def test_gated_model_with_a_token_without_access_is_refused(capsys, nvml, runs_root, monkeypatch):
    nvml([("NVIDIA GeForce RTX 4090", 24564)])
    monkeypatch.setenv("HF_TOKEN", "hf_tuneplanTestSecretToken123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def hf_hub_download(repo_id, filename, *, token=None, **kwargs):
        calls.append(repo_id)
        request = httpx2.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/{filename}")
        raise hub_errors.GatedRepoError("restricted", response=httpx2.Response(403, request=request))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    code, _, err = train(capsys, runs_root, "--model", "llama-3.1-8b", "--gpu", "4090")
    line = _one_line_refusal(code, err, runs_root)
    assert calls == ["meta-llama/Llama-3.1-8B"]
    assert "no access yet" in line and "hf_tuneplan" not in line


@pytest.mark.slow
def test_force_trains_here_in_float32(capsys, nvml, runs_root, tiny_model):
    """--force on a machine without a GPU: planned for the target, trained on the CPU in the
    dtype every CPU launch uses (the wizard's rule too)."""
    nvml(fail=True)
    code, out, err = train(capsys, runs_root, "--model", str(tiny_model), "--vram", "4GiB", "--force",
                           "--max-steps", "1", "--foreground")
    assert code == 0, err
    assert "--vram 4GiB" in err and "--force" in err and "float32" in err
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir()]
    assert load_config(run_dir / "config.toml").setup.compute_dtype == "float32"


def test_no_gpu_and_no_target_refuses_a_real_model(capsys, nvml, runs_root, monkeypatch):
    nvml(fail=True)
    monkeypatch.setenv("HF_TOKEN", "hf_tuneplanTestSecretToken123")  # offline: the access is not asked
    code, _, err = train(capsys, runs_root, "--model", "llama-3.1-8b")
    line = _one_line_refusal(code, err, runs_root)
    assert "no NVIDIA GPU here" in line and "--force" in line and "hf_tuneplan" not in line


@pytest.mark.slow
def test_bundled_tiny_model_plans_for_the_cpu_in_full(capsys, nvml, runs_root, monkeypatch, tmp_path):
    nvml(fail=True)
    monkeypatch.setenv("TUNEPLAN_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = train(capsys, runs_root, "--model", "tuneplan:tiny", "--max-steps", "1", "--foreground")
    assert code == 0, err
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir()]
    setup = load_config(run_dir / "config.toml").setup
    assert setup.method == "full" and setup.compute_dtype == "float32"
    # the saved model's card is a full fine-tune's: no LoRA line, no peft snippet, loads the final folder
    card = (run_dir / "model" / "README.md").read_text()
    assert "LoRA" not in card and "peft" not in card
    assert f'AutoModelForCausalLM.from_pretrained("{run_dir / "model"}")' in card
