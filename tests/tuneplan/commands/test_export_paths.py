"""What `tuneplan export` prints and writes for a full fine-tune and for vLLM (issue 19, item
12): the Modelfile's FROM is relative, as in the LoRA export, and the vLLM line serves the
model's context and says the training length instead of imposing it silently."""

from __future__ import annotations

import shutil
from pathlib import Path

from planner.setup import TrainSetup
from tuneplan.cli import main
from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config
from tuneplan.events import MODEL_DIR


def _full_run(tmp_path: Path, tiny_model: Path, seq_len: int = 64) -> Path:
    """A finished full fine-tune's folder: its config and its model (the real tiny model)."""
    run_dir = tmp_path / "runs" / "full1"
    run_dir.mkdir(parents=True)
    save_config(RunConfig(model=ModelConfig(source=str(tiny_model)), data=DataConfig(source="d.jsonl"),
                          setup=TrainSetup(method="full", seq_len=seq_len, compute_dtype="float32"), name="full1"),
                run_dir / "config.toml")
    shutil.copytree(tiny_model, run_dir / MODEL_DIR)
    return run_dir


def test_full_fine_tune_modelfile_points_at_the_model_by_a_relative_path(tiny_model, tmp_path, capsys):
    run_dir = _full_run(tmp_path, tiny_model)
    assert main(["export", str(run_dir), "--format", "ollama"]) == 0
    out = run_dir / "ollama"
    line = next(x for x in (out / "Modelfile").read_text().splitlines() if x.startswith("FROM "))
    target = line[len("FROM "):]
    assert not Path(target).is_absolute() and str(tmp_path) not in target, line
    assert (out / target).resolve() == (run_dir / MODEL_DIR).resolve()  # from the folder `ollama create` runs in
    moved = tmp_path / "elsewhere"
    shutil.move(str(run_dir), moved)  # the run folder moved or copied to another machine: it still holds
    assert (moved / "ollama" / target / "config.json").is_file()
    assert "relative path" in capsys.readouterr().out


def test_vllm_serves_the_models_context_and_says_the_training_length(tiny_model, tmp_path, capsys):
    import json

    run_dir = _full_run(tmp_path, tiny_model, seq_len=64)
    context = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    assert context != 64
    assert main(["export", str(run_dir), "--format", "vllm"]) == 0
    printed = capsys.readouterr().out
    assert "vllm serve" in printed and "--max-model-len 64" not in printed.split("vllm serve", 1)[1].splitlines()[0]
    assert f"the model's context, {context:,} tokens" in printed
    assert "trained on sequences of up to 64 tokens" in printed and "add --max-model-len 64" in printed
