"""`tuneplan export --format ollama|vllm|safetensors` on a real trained run."""

from __future__ import annotations

import pytest

from tuneplan.cli import main


def _logits_match(merged_dir, run_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneplan.config import load_config

    source = load_config(run_dir / "config.toml").model.source
    ids = torch.tensor([[4, 20, 30, 40, 2, 7, 9]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(base, run_dir / "adapter")(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, adapted, atol=1e-3)  # the adapter changed something


@pytest.mark.slow
def test_ollama_export_writes_modelfile_and_merged_weights(trained_lora_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    from tuneplan.training.export_formats import chat_pieces

    run_dir, _ = trained_lora_run
    out = tmp_path / "ollama"
    assert main(["export", str(run_dir), "--format", "ollama", "--dtype", "float32", "--out", str(out),
                 "--name", "tiny-chat"]) == 0
    printed = capsys.readouterr().out
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out / "adapter_config.json").exists()
    _logits_match(out, run_dir)
    modelfile = (out / "Modelfile").read_text()
    assert "\nFROM .\n" in modelfile
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    pieces = chat_pieces(tok)  # the run's template, cut per role and checked against the original
    assert f'TEMPLATE """{pieces.go_template()}"""' in modelfile
    assert '{{ "<|user|>\\n" }}{{ .Content }}' in modelfile and "range .Messages" in modelfile
    assert f'PARAMETER stop "{tok.eos_token}"' in modelfile
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 4+4?"}]
    assert pieces.render(conv) == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert f"cd {out}" in printed and "ollama create tiny-chat -f Modelfile -q q4_K_M" in printed
    assert "ollama run tiny-chat" in printed
    assert main(["export", str(run_dir), "--format", "ollama", "--out", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_vllm_and_safetensors_exports(trained_lora_run, tmp_path, capsys):
    from tuneplan.config import load_config

    run_dir, _ = trained_lora_run
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["export", str(run_dir), "--format", "vllm"]) == 0
    printed = capsys.readouterr().out
    base = load_config(run_dir / "config.toml").model.source
    name = run_dir.name.lower()
    assert f"vllm serve {base} --enable-lora --max-lora-rank 8 --lora-modules {name}={run_dir / 'adapter'}\n" in printed
    assert "trained on sequences of up to 64 tokens; add --max-model-len 64" in printed  # said, not imposed
    assert sorted(p.name for p in run_dir.iterdir()) == before  # the adapter as is: nothing written
    # --merge keeps working, and is --format safetensors
    assert main(["export", str(run_dir), "--merge", "--dtype", "float32", "--out", str(tmp_path / "m")]) == 0
    assert "merged model written to" in capsys.readouterr().out
    _logits_match(tmp_path / "m", run_dir)
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "m2")]) == 0
    assert (tmp_path / "m2" / "model.safetensors").exists()
    assert main(["export", str(run_dir), "--merge", "--format", "vllm"]) == 2


def test_qlora_exports_say_the_merge_goes_into_the_16_bit_base(tmp_path, capsys):
    from planner.setup import TrainSetup
    from tuneplan.commands.export import _merge_note
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config

    config = RunConfig(model=ModelConfig(source="org/base"), data=DataConfig(source="d.jsonl"),
                       setup=TrainSetup(method="qlora", lora_rank=24), name="q1")
    run_dir = tmp_path / "q1"
    (run_dir / "adapter").mkdir(parents=True)
    save_config(config, run_dir / "config.toml")
    assert main(["export", str(run_dir), "--format", "vllm", "--name", "q"]) == 0
    printed = capsys.readouterr().out
    assert "--max-lora-rank 32" in printed and "16-bit base, not the 4-bit one" in printed  # 24 -> vLLM's 32
    note = _merge_note(config, "bfloat16")
    assert "16-bit base (bfloat16)" in note and "not into the 4-bit base" in note
    assert main(["export", str(run_dir)]) == 2  # no format: one line, exit 2
    assert "--format ollama|vllm|safetensors" in capsys.readouterr().err
