"""`tuneplan push` against a local fake of the Hub's HTTP API (tests/fake_hub.py): the adapter
and a model card with the metadata the Hub reads arrive, and the token is written nowhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fake_hub import FakeHub

TOKEN = "hf_tuneplanFakeToken0123456789abcdefXYZ"


def _push(run_dir, hub, tmp_path, *argv, token=TOKEN):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "tuneplan", "push", str(run_dir), *argv], env=env,
                          capture_output=True, text=True, timeout=300)


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _no_token_anywhere(run_dir, *texts):
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for text in texts:
        assert TOKEN not in text


@pytest.mark.slow
def test_push_uploads_the_adapter_and_a_card(trained_lora_run, tmp_path):
    run_dir, _ = trained_lora_run
    with FakeHub() as hub:
        proc = _push(run_dir, hub, tmp_path, "--repo", "me/tiny-adapter", "--private",
                     "--base-model", "tuneplan-test/tiny-llama")
        assert proc.returncode == 0, proc.stderr[-2000:]
    repo = hub.repos["me/tiny-adapter"]
    assert repo["private"] is True
    files = repo["files"]
    adapter = run_dir / "adapter"
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    assert files["adapter_config.json"] == (adapter / "adapter_config.json").read_bytes()
    assert "tokenizer.json" in files and "README.md" in files
    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert meta["base_model"] == "tuneplan-test/tiny-llama" and meta["library_name"] == "peft"
    assert "base_model:adapter:tuneplan-test/tiny-llama" in meta["tags"] and "lora" in meta["tags"]
    assert meta["pipeline_tag"] == "text-generation"
    assert "`sample_chat.jsonl` (local file)" in card  # a local dataset: named, not in the metadata
    from tuneplan.events import read_events, read_status

    events = list(read_events(run_dir))
    final = read_status(run_dir).loss
    eval_loss = [e for e in events if e.kind == "eval"][-1].eval_loss
    assert f"| final training loss | {final:.4f} |" in card and f"| eval loss | {eval_loss:.4f} |" in card
    assert "| tokens/s (median of the log) |" in card and "| peak memory, `max_memory_allocated` |" in card
    assert "micro_batch = 4" in card and "lora_rank = 8" in card and "[training]" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/tiny-adapter")' in card
    assert str(run_dir.parent) not in card  # local paths by name only
    auth = {h.get("Authorization") or h.get("authorization") for _, _, h, _ in hub.requests}
    assert auth == {f"Bearer {TOKEN}"}  # the token was used for every call ...
    _no_token_anywhere(run_dir, proc.stdout, proc.stderr, *(f.decode("utf-8", "replace") for f in files.values()))
    _no_token_anywhere(tmp_path)  # nor in huggingface_hub's home (no login file, no cache of it)
    assert "me/tiny-adapter" in proc.stdout and "(private)" in proc.stdout


@pytest.mark.slow
def test_push_merged_and_the_one_line_errors(trained_lora_run, tmp_path):
    run_dir, _ = trained_lora_run
    with FakeHub() as hub:
        proc = _push(run_dir, hub, tmp_path, "--repo", "me/tiny-merged", "--merged")
        assert proc.returncode == 0, proc.stderr[-2000:]
        no_token = _push(run_dir, hub, tmp_path, "--repo", "me/x", token=None)
        bad_repo = _push(run_dir, hub, tmp_path, "--repo", "not a repo")

    class Dead:
        url = "http://127.0.0.1:9"  # nothing listens there

    dead = _push(run_dir, Dead, tmp_path, "--repo", "me/y")
    assert dead.returncode == 2 and dead.stderr.count("\n") == 1 and "cannot reach http://127.0.0.1:9" in dead.stderr
    files = hub.repos["me/tiny-merged"]["files"]
    assert "model.safetensors" in files and "adapter_config.json" not in files
    meta = _front_matter(files["README.md"].decode())
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # a local base: no Hub id
    assert hub.repos["me/tiny-merged"]["private"] is False
    assert no_token.returncode == 2 and no_token.stderr.count("\n") == 1 and "HF_TOKEN" in no_token.stderr
    assert bad_repo.returncode == 2 and "--repo must be a Hub id" in bad_repo.stderr
    assert "me/x" not in hub.repos
    _no_token_anywhere(run_dir, proc.stdout, proc.stderr)


def test_the_card_carries_tuneplan_evals_results(tmp_path):
    """With `RUN/eval.json` (`tuneplan eval`), the pushed card shows base beside tuned."""
    import shutil
    from pathlib import Path

    from tuneplan.config import load_config
    from tuneplan.services import eval_results
    from tuneplan.services.model_card import model_card

    run_dir = tmp_path / "tiny-done"
    shutil.copytree(Path(__file__).resolve().parents[2] / "data" / "runs" / "tiny-done", run_dir)
    config = load_config(run_dir / "config.toml")
    assert "## Evaluation" not in model_card(run_dir, config, load_from="me/x", public=True)
    base = eval_results.ModelScores(loss=3.5, perplexity=33.1, scored_tokens=40, exact_match=0.0, generated=5)
    tuned = eval_results.ModelScores(loss=1.25, perplexity=3.49, scored_tokens=40, exact_match=0.6, generated=5)
    eval_results.write_eval(run_dir, eval_results.EvalReport(
        run="tiny-done", base_model="m", weights="adapter", method="lora", data_format="chat", held_out_examples=5,
        base=base, adapter=tuned))
    card = model_card(run_dir, config, load_from="me/x", public=True)
    assert "## Evaluation" in card and "5 held-out examples" in card
    assert "| loss | 3.5000 | 1.2500 | -2.2500 |" in card and "| exact match | 0.0% | 60.0% | +60.0 pts |" in card
    assert card.index("## Results") < card.index("## Evaluation") < card.index("## Use")


# --- issue 19, items 2 and 8: only the run's own regular files go up; ids the Hub refuses ---------

def _adapter_run(tmp_path):
    """A finished LoRA run folder as push sees it: config.toml and adapter/ (no training needed)."""
    from tiny_runs import tiny_config
    from tuneplan.config import save_config

    run = tmp_path / "runs" / "r"
    (run / "adapter").mkdir(parents=True)
    save_config(tiny_config(tmp_path / "no-model"), run / "config.toml")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


def test_push_uploads_no_symlink_and_says_what_it_skipped(tmp_path):
    run = _adapter_run(tmp_path)
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- not for the Hub")
    (run / "adapter" / "x").symlink_to(secret)
    (run / "adapter" / "sub").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(run / "adapter" / "pipe")
    with FakeHub() as hub:
        proc = _push(run, hub, tmp_path, "--repo", "me/tiny-adapter")
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = hub.repos["me/tiny-adapter"]["files"]
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    assert not any(b"PRIVATE KEY" in data for data in files.values())
    assert "skipped 3: pipe (not a regular file), sub/ (a symlink to a folder), x (a symlink)" in proc.stdout


@pytest.mark.parametrize("repo", ["me/x.", "me/x.git", "me/x--y", "me/x..y", "me/-x"])
def test_push_refuses_repo_ids_the_hub_rejects_in_one_line(tmp_path, repo):
    run = _adapter_run(tmp_path)
    with FakeHub() as hub:
        proc = _push(run, hub, tmp_path, "--repo", repo)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert repo in lines[0] and "Hub" in lines[0]
    assert not hub.repos
