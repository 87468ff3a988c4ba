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


# --- issue 19, item 4: export never removes a user's folder, and says in one line what stops it ---

@pytest.fixture
def adapter_run(tiny_model, tmp_path):
    """A LoRA run folder holding a real (untrained: peft's initial) adapter on the tiny model:
    enough to merge and export, no training needed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_runs import tiny_config
    from tuneplan.config import save_config

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    save_config(tiny_config(tiny_model), run / "config.toml")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run / "adapter")
    return run


def _export_one_line(capsys, *argv) -> str:
    capsys.readouterr()
    code = main(["export", *argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.mark.slow
def test_export_keeps_a_users_partial_folder_and_refuses_a_symlink_out(adapter_run, tmp_path, capsys):
    users = tmp_path / ".x.partial"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    assert main(["export", str(adapter_run), "--format", "safetensors", "--out", str(tmp_path / "x")]) == 0
    assert (users / "notes.txt").read_text() == "mine" and (tmp_path / "x" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial") and p != users]
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert "symlink" in _export_one_line(capsys, str(adapter_run), "--format", "safetensors",
                                         "--out", str(tmp_path / "link"))
    long = tmp_path / ("n" * 250)
    assert main(["export", str(adapter_run), "--format", "safetensors", "--out", str(long)]) == 0
    assert (long / "model.safetensors").is_file()


@pytest.mark.slow
def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(adapter_run, tmp_path):
    from tests.disk_faults import fill, mounted_tmpfs
    from tuneplan.errors import UserError
    from tuneplan.training.inference import export_merged

    with pytest.raises(UserError) as err:
        export_merged(adapter_run, tmp_path / "y", free_bytes=lambda _p: 1000)
    assert "1000 B free" in str(err.value) and "0.0 GiB" not in str(err.value)
    with mounted_tmpfs(tmp_path, "4m") as mnt:
        fill(mnt)
        with pytest.raises(UserError, match="ENOSPC") as err:
            export_merged(adapter_run, mnt / "out", free_bytes=lambda _p: 1 << 40)  # the disk fills during the merge
        assert "\n" not in str(err.value)
        assert not [p for p in mnt.iterdir() if p.name.endswith(".partial") or p.name == "out"]


def test_printed_commands_are_shell_quoted(tmp_path, capsys):
    import shlex

    from planner.setup import TrainSetup
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config
    from tuneplan.training.export_formats import ollama_commands

    evil = "x; touch /tmp/PWNED #"
    create = ollama_commands(tmp_path / "o", evil)[1]
    assert shlex.split(create) == ["ollama", "create", evil, "-f", "Modelfile", "-q", "q4_K_M"]
    config = RunConfig(model=ModelConfig(source="org/base"), data=DataConfig(source="d.jsonl"),
                       setup=TrainSetup(method="lora", lora_rank=8), name="r")
    run_dir = tmp_path / "r"
    (run_dir / "adapter").mkdir(parents=True)
    save_config(config, run_dir / "config.toml")
    assert main(["export", str(run_dir), "--format", "vllm", "--name", evil]) == 0
    curl = next(line for line in capsys.readouterr().out.splitlines() if "curl " in line)
    words = shlex.split(curl.split(": curl ", 1)[1])
    import json

    assert json.loads(words[words.index("-d") + 1])["model"] == evil and "touch" not in words
