"""Real LoRA / QLoRA training of the tiny model on the CPU, in-process (the worker's code)."""

from __future__ import annotations

import json

import pytest

from tiny_runs import tiny_config
from tuneplan.events import ADAPTER_DIR, PHASES, read_events, read_status
from tuneplan.services.launcher import prepare_run
from tuneplan.training.runner import run_worker

LOG_KEYS = {"step", "max_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second",
            "samples_per_second", "elapsed_seconds", "eta_seconds"}


def _train(tiny_model, runs_root, **changes):
    run_dir = prepare_run(tiny_config(tiny_model, **changes), runs_root)
    result = run_worker(run_dir, install_signals=False)
    return run_dir, result


def _check_run_files(run_dir, max_steps):
    events = list(read_events(run_dir))
    assert all(isinstance(e.time, float) and e.kind for e in events)
    phases = [e.phase for e in events if e.kind == "phase"]
    assert set(phases) <= set(PHASES)
    assert phases[:4] == ["queued", "loading", "tokenizing", "training"] and phases[-2:] == ["saving", "done"]
    logs = [e for e in events if e.kind == "log"]
    assert logs and all(LOG_KEYS <= set(e.to_dict()) for e in logs)
    assert [e.step for e in logs] == sorted({e.step for e in logs}) and logs[-1].step == max_steps
    assert logs[-1].tokens_per_second > 0 and logs[-1].samples_per_second > 0
    data = [e for e in events if e.kind == "data"]
    assert data and data[0].format == "messages" and data[0].examples == 400
    assert [e for e in events if e.kind == "eval"]
    assert [e.step for e in events if e.kind == "checkpoint"] == [12, 24]
    status = read_status(run_dir)
    assert status.phase == "done" and status.step == max_steps and status.error is None
    assert status.last_checkpoint.endswith("checkpoint-24") and status.loss == logs[-1].loss
    json.loads((run_dir / "status.json").read_text())  # valid JSON on disk
    return logs


def _probe_logits(model, tokenizer):
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids["input_ids"]).logits.float()


@pytest.mark.slow
def test_lora_run_learns_records_and_reloads(tiny_model, trained_lora_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, result = trained_lora_run
    assert result.exit_code == 0
    logs = _check_run_files(run_dir, 24)
    assert logs[-1].loss < logs[0].loss - 0.2, [e.loss for e in logs]

    adapter = run_dir / ADAPTER_DIR
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "tokenizer.json").exists()
    card = (adapter / "README.md").read_text()
    assert str(tiny_model) in card and "effective 4" in card
    assert not (adapter / "model.safetensors").exists()  # adapter only
    trained = _probe_logits(result.trainer.model, result.tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reloaded = _probe_logits(PeftModel.from_pretrained(base, adapter), result.tokenizer)
    torch.testing.assert_close(reloaded, trained, rtol=1e-5, atol=1e-5)
    untrained = _probe_logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), result.tokenizer)
    assert not torch.allclose(untrained, trained, atol=1e-3)


@pytest.mark.slow
def test_qlora_nf4_run_learns_and_reloads(tiny_model, runs_root):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneplan.training.modeling import bnb_config

    run_dir, result = _train(tiny_model, runs_root, setup={"method": "qlora", "optimizer": "paged-adamw-8bit",
                                                             "grad_checkpointing": True, "packing": True})
    assert result.exit_code == 0, read_status(run_dir).error
    logs = _check_run_files(run_dir, 24)
    assert logs[-1].loss < logs[0].loss - 0.2, [e.loss for e in logs]
    model = result.trainer.model
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    trained = _probe_logits(model, result.tokenizer)
    # A fresh 4-bit base + the saved adapter. Not bit-exact on the CPU: bitsandbytes switches a
    # Linear4bit to a packed avx512-bf16 kernel on its first no-grad eval forward
    # (bitsandbytes/nn/modules.py Linear4bit.forward), so the same base differs by ~2e-3
    # between the trained model and a fresh load. The adapter's effect is far larger.
    from tuneplan.config import load_config

    setup = load_config(run_dir / "config.toml").setup
    fresh = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        tiny_model, dtype=torch.float32, quantization_config=bnb_config(setup))
    reloaded = _probe_logits(PeftModel.from_pretrained(fresh(), run_dir / ADAPTER_DIR), result.tokenizer)
    untrained = _probe_logits(fresh(), result.tokenizer)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-2)
    assert (untrained - trained).abs().max() > 10 * (reloaded - trained).abs().max()
