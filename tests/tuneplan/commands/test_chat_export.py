"""`tuneplan chat` and `tuneplan export --merge` on a real trained run."""

from __future__ import annotations

import pytest

from tuneplan.cli import main
from tuneplan.errors import UserError


@pytest.mark.slow
def test_chat_answers_one_prompt(trained_lora_run, capsys):
    run_dir, _ = trained_lora_run
    assert main(["chat", str(run_dir), "--prompt", "What is 2 plus 3?", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out.strip()
    # The same greedy continuation, computed by hand from the template the run trained with.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneplan.config import load_config

    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt.endswith("<|assistant|>\n")
    base = AutoModelForCausalLM.from_pretrained(load_config(run_dir / "config.toml").model.source, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert out == tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_export_merges_into_16_bit_safetensors(trained_lora_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneplan.config import load_config
    from tuneplan.training.inference import export_merged

    run_dir, _ = trained_lora_run
    out = export_merged(run_dir, tmp_path / "merged", dtype="float32")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out / "adapter_config.json").exists()
    source = load_config(run_dir / "config.toml").model.source
    ids = torch.tensor([[4, 20, 30, 40, 2]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(base, run_dir / "adapter")(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)

    default = export_merged(run_dir, tmp_path / "bf16")
    assert AutoModelForCausalLM.from_pretrained(default).dtype == torch.bfloat16
    with pytest.raises(UserError, match="already exists"):
        export_merged(run_dir, out)
    with pytest.raises(UserError, match="not enough free RAM"):
        export_merged(run_dir, tmp_path / "x", ram_bytes=1000)
    with pytest.raises(UserError, match="not enough disk space"):
        export_merged(run_dir, tmp_path / "y", free_bytes=lambda _p: 1000)
