"""The one model-card builder (`tuneplan/services/model_card.py`), for the card a run's final
folder holds and the one `tuneplan push` uploads: a full fine-tune's card says nothing of LoRA
and loads with transformers; an adapter's has its LoRA line and loads with peft. Built from a
recorded run folder (`tests/data/runs/tiny-done`)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from tuneplan.config import load_config, save_config
from tuneplan.events import CONFIG_FILE
from tuneplan.services.model_card import model_card

RUNS = Path(__file__).resolve().parents[2] / "data" / "runs"


def _run(tmp_path: Path, method: str) -> tuple[Path, object]:
    run_dir = tmp_path / "tiny-done"
    shutil.copytree(RUNS / "tiny-done", run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    config = replace(config, setup=replace(config.setup, method=method))
    save_config(config, run_dir / CONFIG_FILE, overwrite=True)
    return run_dir, config


def _front_matter(card: str) -> str:
    return card.split("---")[1]


def test_a_full_fine_tunes_card_has_no_lora_line_and_loads_with_transformers(tmp_path):
    run_dir, config = _run(tmp_path, "full")
    card = model_card(run_dir, config, load_from=str(run_dir / "model"), public=False, steps=40, final_loss=5.4261)
    assert "LoRA" not in card and "peft" not in card and "lora_rank" not in card.split("```toml")[0]
    assert "A full fine-tune of `tiny-model`" in card
    assert f'AutoModelForCausalLM.from_pretrained("{run_dir / "model"}")' in card
    assert "library_name: transformers" in _front_matter(card)
    assert "| steps | 40 |" in card and "| final training loss | 5.4261 |" in card
    assert "| eval loss | 5.5329 |" in card  # the run's last eval event
    assert "`tuneplan/data/sample_chat.jsonl` (local file)" in card  # a local card names paths in full


def test_an_adapters_card_has_its_lora_line_and_loads_with_peft(tmp_path):
    run_dir, config = _run(tmp_path, "lora")
    local = model_card(run_dir, config, load_from=str(run_dir / "adapter"), public=False,
                       notes=["LoRA r=16 alpha=32 on all-linear"])
    assert "- LoRA: rank 16, alpha 32, dropout 0.05, targets all-linear" in local
    assert f'AutoPeftModelForCausalLM.from_pretrained("{run_dir / "adapter"}")' in local
    assert "library_name: peft" in _front_matter(local) and "effective 2 sequences" in local
    assert "## Notes from the run\n\n- LoRA r=16 alpha=32 on all-linear" in local
    hub = model_card(run_dir, config, load_from="me/tiny", public=True, base_model="org/tiny")
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/tiny")' in hub and "base_model:adapter:org/tiny" in hub
    assert "`sample_chat.jsonl` (local file)" in hub and "tuneplan/data" not in hub  # named, not located
    merged = model_card(run_dir, config, load_from="me/tiny-merged", public=True, merged=True)
    assert "merged into its base model" in merged and "AutoPeftModel" not in merged
