"""`tuneplan.training.evaluation`: the answer metrics against independent implementations, the
bad-input lines, and real evaluations of a trained tiny LoRA run (the merged export scores the same)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneplan.errors import UserError
from tuneplan.services import eval_results
from tuneplan.training import evaluation
from tuneplan.training.evaluation import exact_match, normalize_answer, rouge_l, token_f1

from eval_reports import sample_report

RUNS = Path(__file__).resolve().parents[2] / "data" / "runs"
ROOT = Path(__file__).resolve().parents[3]


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / name
    shutil.copytree(RUNS / name, dst)
    return dst


# --- metrics -----------------------------------------------------------------------------------

def test_squad_normalisation_exact_match_and_f1():
    # SQuAD v1.1: case, punctuation and the articles a/an/the do not count
    assert normalize_answer("The  Answer, is: 42!") == "answer is 42"
    assert exact_match("the Cloud.", "CLOUD") == 1.0
    assert exact_match("19 ", "19") == 1.0
    assert exact_match("190", "19") == 0.0
    # precision 1/2, recall 1/1 -> F1 = 2/3
    assert token_f1("10 apples", "10") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # bag of tokens: a repeated token counts as often as it is shared
    assert token_f1("x y y", "y y z") == pytest.approx(2 / 3)
    assert token_f1("a y y", "y y z") == pytest.approx(0.8)  # "a" is an article: dropped


@pytest.mark.parametrize("pred,ref", [
    ("the cat sat on the mat", "the cat was on the mat"),
    ("police killed the gunman", "the gunman kill police"),
    ("10", "10"),
    ("dleif", "field"),
    ("a b c d e f", "f e d c b a"),
    ("What is 2 plus 17? It is 19.", "19"),
])
def test_rouge_l_matches_rouge_score(pred, ref):
    """Our LCS ROUGE-L F-measure against Google's rouge-score (installed with lm-eval)."""
    scorer_mod = pytest.importorskip("rouge_score.rouge_scorer")
    expected = scorer_mod.RougeScorer(["rougeL"], use_stemmer=False).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l(pred, ref) == pytest.approx(expected)


def test_lcs_length_by_hand():
    assert evaluation._lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS's example: BCBA
    assert evaluation._lcs_length([], list("abc")) == 0


# --- bad input: one line each, nothing loaded ------------------------------------------------------

def test_a_failed_or_crashed_run_is_refused(tmp_path):
    from tuneplan.events import read_status, write_status

    run_dir = _copy("tiny-crashed", tmp_path)  # recorded: failed (out of memory, no retry left)
    with pytest.raises(UserError, match=r"run tiny-crashed failed \(out of memory.*tuneplan resume tiny-crashed"):
        evaluation.evaluate_run(run_dir)
    # a status that never became final and whose process is gone reads "crashed"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    status = read_status(run_dir)
    status.phase, status.error, status.pids, status.processes = "training", None, [gone.pid], []
    write_status(run_dir, status)
    with pytest.raises(UserError, match=r"^run tiny-crashed crashed: it has no final weights"):
        evaluation.evaluate_run(run_dir)
    # a run whose trainer is alive is still training: evaluated once it is done
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from tuneplan.run_process import process_record

        status.pids, status.processes = [alive.pid], [process_record(alive.pid)]
        write_status(run_dir, status)
        with pytest.raises(UserError, match=r"^run tiny-crashed is still training: evaluate it when it is done"):
            evaluation.evaluate_run(run_dir)
    finally:
        alive.kill()
        alive.wait()
    assert not (run_dir / "eval.json").exists()


def test_a_run_without_held_out_split_is_refused(tmp_path):
    run_dir = _copy("tiny-done", tmp_path)
    cfg = run_dir / "config.toml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("eval_fraction = 0.1", "eval_fraction = 0.0"),
                   encoding="utf-8")
    with pytest.raises(UserError, match=r"no held-out split \(data.eval_fraction = 0\).*--eval-fraction"):
        evaluation.evaluate_run(run_dir)


def test_a_done_run_without_weights_is_refused(tmp_path):
    run_dir = _copy("tiny-done", tmp_path)
    with pytest.raises(UserError, match="has no adapter/ and no checkpoint"):
        evaluation.evaluate_run(run_dir)


def test_an_existing_eval_json_is_kept_before_anything_loads(tmp_path):
    run_dir = _copy("tiny-done", tmp_path)
    eval_results.write_eval(run_dir, sample_report())
    before = (run_dir / "eval.json").read_bytes()
    with pytest.raises(UserError, match="eval.json already exists"):
        evaluation.evaluate_run(run_dir)
    assert (run_dir / "eval.json").read_bytes() == before


def test_lm_eval_missing_is_one_line(tmp_path):
    """In a fresh interpreter where `lm_eval` cannot be imported."""
    code = ("import sys; sys.modules['lm_eval'] = None; sys.modules['lm_eval.tasks'] = None\n"
            "from tuneplan.training.evaluation import resolve_tasks\n"
            "try:\n    resolve_tasks(['x'])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip().startswith("UserError --tasks needs lm-evaluation-harness: pip install")


def test_shipped_task_is_found_without_indexing_lm_eval(tmp_path):
    pytest.importorskip("lm_eval")
    manager = evaluation.resolve_tasks(["tuneplan_sample_arith"])
    assert "tuneplan_sample_arith" in manager.all_tasks
    with pytest.raises(UserError, match="--task-path .* does not exist"):
        evaluation.resolve_tasks(["tuneplan_sample_arith"], [tmp_path / "nope"])
    # a task of one's own: the shipped folder copied and renamed, given with --task-path
    mine = tmp_path / "my-tasks"
    shutil.copytree(evaluation.TASKS_DIR, mine)
    yaml_file = mine / "tuneplan_sample_arith.yaml"
    yaml_file.rename(mine / "my_arith.yaml")
    text = (mine / "my_arith.yaml").read_text(encoding="utf-8")
    (mine / "my_arith.yaml").write_text(text.replace("task: tuneplan_sample_arith", "task: my_arith"),
                                        encoding="utf-8")
    assert "my_arith" in evaluation.resolve_tasks(["my_arith"], [mine]).all_tasks


# --- real evaluations ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_eval(trained_lora_run, tmp_path_factory):
    """One evaluation of the shared LoRA run, on a copy (eval.json, the card): (run_dir, report)."""
    src, _ = trained_lora_run
    run_dir = tmp_path_factory.mktemp("eval-run") / src.name
    shutil.copytree(src, run_dir)
    return run_dir, evaluation.evaluate_run(run_dir, max_examples=6, max_new_tokens=8)


@pytest.mark.slow
def test_eval_of_a_lora_run_writes_everything(lora_eval):
    run_dir, report = lora_eval
    on_disk = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert report.held_out_examples == 6 and report.data_format == "chat" and report.weights == "adapter"
    b, a = report.base, report.adapter
    assert b.scored_tokens == a.scored_tokens > 0
    # 24 steps of LoRA on the task: the held-out loss falls below the random base's
    assert a.loss < b.loss
    assert a.perplexity == pytest.approx(math.exp(a.loss))
    for scores in (b, a):
        assert scores.generated == 6
        assert 0 <= scores.exact_match <= scores.token_f1 <= 1 or scores.exact_match == 1
        assert 0 <= scores.rouge_l <= 1
    assert len(report.examples) == 3 and report.examples[0].reference
    card = (run_dir / "adapter" / "README.md").read_text(encoding="utf-8")
    assert card.count("## Evaluation") == 1 and f"| loss | {b.loss:.4f} | {a.loss:.4f} |" in card


@pytest.mark.slow
def test_eval_loss_is_the_trainers_token_mean(lora_eval):
    """The held-out loss is the run's own masked loss: the last eval event of the run (the
    trainer's mean over batches) agrees with ours within the batch weighting on a full split."""
    from tuneplan.events import read_events

    run_dir, _ = lora_eval
    report = evaluation.evaluate_run(run_dir, write=False, max_new_tokens=1)
    trainer_eval = [e for e in read_events(run_dir) if e.kind == "eval"][-1].eval_loss
    assert report.adapter.loss == pytest.approx(trainer_eval, rel=0.05)


@pytest.mark.slow
def test_eval_of_a_lora_run_equals_the_eval_of_its_merged_export(lora_eval, tmp_path):
    """`tuneplan export RUN --format safetensors` (float32, to compare without 16-bit rounding),
    evaluated as a plain model, scores what the adapter on its base scores."""
    from tiny_runs import tuneplan

    run_dir, report = lora_eval
    merged = tmp_path / "merged"
    out = tuneplan(run_dir.parent, "export", str(run_dir), "--format", "safetensors", "--dtype", "float32",
                   "--out", str(merged))
    assert out.returncode == 0, out.stderr
    plain = evaluation.evaluate_run(run_dir, max_examples=6, max_new_tokens=8, model_dir=merged)
    assert plain.weights == str(merged)
    assert plain.adapter.loss == pytest.approx(report.adapter.loss, rel=1e-5)
    assert plain.base.loss == pytest.approx(report.base.loss, rel=1e-6)
    for key in ("exact_match", "token_f1", "rouge_l"):
        assert getattr(plain.adapter, key) == pytest.approx(getattr(report.adapter, key), abs=1e-9)
    assert [e.adapter for e in plain.examples] == [e.adapter for e in report.examples]


@pytest.mark.slow
def test_lm_eval_task_from_local_files_runs_offline(lora_eval):
    pytest.importorskip("lm_eval")
    run_dir, _ = lora_eval
    report = evaluation.evaluate_run(run_dir, tasks=["tuneplan_sample_arith"], task_limit=6, max_examples=2,
                                     max_new_tokens=2, write=False)
    for side in (report.base, report.adapter):
        metrics = side.tasks["tuneplan_sample_arith"]
        assert set(metrics) == {"acc", "perplexity"}
        assert 0 <= metrics["acc"] <= 1 and metrics["perplexity"] > 1


def test_results_reach_tensorboard_when_the_run_reports_there(tmp_path):
    """`training.report_to = "tensorboard"`: scalars per side and the table as text, in RUN/tensorboard/eval."""
    from dataclasses import replace

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneplan.config import load_config
    from tuneplan.training.tracking import log_evaluation

    run_dir = _copy("tiny-done", tmp_path)
    config = load_config(run_dir / "config.toml")
    report = sample_report()
    log_evaluation(run_dir, replace(config, training=replace(config.training, report_to="none")), report)
    assert not (run_dir / "tensorboard").exists()
    log_evaluation(run_dir, replace(config, training=replace(config.training, report_to="tensorboard")), report)
    acc = EventAccumulator(str(run_dir / "tensorboard" / "eval"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    step = json.loads((run_dir / "status.json").read_text())["step"]
    assert [(s.step, s.value) for s in acc.Scalars("eval/base/loss")] == [(step, 2.0)]
    assert [s.value for s in acc.Scalars("eval/tuned/exact_match")] == [0.5]
    assert [s.value for s in acc.Scalars("eval/tuned/t/acc")] == [0.25]
    assert any(t.startswith("tuneplan/eval") for t in acc.Tags()["tensors"])


@pytest.mark.slow
def test_a_packed_text_run_gets_loss_and_perplexity_only(tiny_model, tmp_path):
    """`text` rows: no prompts to answer, so loss and perplexity only; with packing the rows are
    scored as the trainer packs them (padding-free, documents kept apart by position_ids)."""
    from tiny_runs import tiny_config
    from tuneplan.services.launcher import prepare_run
    from tuneplan.training.runner import run_worker

    data = tmp_path / "text.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    data.write_text("".join(json.dumps({"text": " ".join(words[(i + j) % 6] for j in range(8 + i % 5))}) + "\n"
                            for i in range(60)), encoding="utf-8")
    config = tiny_config(tiny_model, data={"source": str(data), "eval_fraction": 0.2},
                         setup={"packing": True}, training={"max_steps": 12, "save_steps": 12})
    run_dir = prepare_run(config, tmp_path / "runs")
    assert run_worker(run_dir, install_signals=False).exit_code == 0
    report = evaluation.evaluate_run(run_dir)
    assert report.data_format == "text" and report.held_out_examples == 12 and report.examples == []
    for side in (report.base, report.adapter):
        assert side.generated == 0 and side.exact_match is None and side.rouge_l is None
        assert side.scored_tokens > 0 and math.isfinite(side.loss)
    assert report.adapter.loss < report.base.loss  # six words in turn are easy to learn
    from tuneplan.events import read_events

    # the trainer's last eval of the same packed rows (a mean over batches; one batch here)
    trainer_eval = [e for e in read_events(run_dir) if e.kind == "eval"][-1].eval_loss
    assert report.adapter.loss == pytest.approx(trainer_eval, rel=0.02)
    assert "exact match" not in "\n".join(eval_results.table_lines(report))


@pytest.mark.slow
def test_data_holding_the_held_out_rows_scores_as_the_split(lora_eval, tmp_path):
    """`--data FILE` goes through the run's own data path: a file of the held-out rows (in the
    split's order, picked as `training/data.py` splits: the run's seed) gives the split's loss and
    answers exactly; the report names the file."""
    import datasets

    from tuneplan.config import load_config

    run_dir, report = lora_eval
    config = load_config(run_dir / "config.toml")
    lines = Path(config.data.source).read_text(encoding="utf-8").splitlines()
    n_eval = max(1, int(round(len(lines) * config.data.eval_fraction)))
    order = datasets.Dataset.from_dict({"i": list(range(len(lines)))}).train_test_split(
        test_size=n_eval, seed=config.training.seed, shuffle=True)["test"]["i"]
    held = tmp_path / "held-out.jsonl"
    held.write_text("".join(lines[i] + "\n" for i in order), encoding="utf-8")
    other = evaluation.evaluate_run(run_dir, data=str(held), max_examples=6, max_new_tokens=8, write=False)
    assert (other.scored_on, other.data_source, other.data_rows, other.held_out_examples) == \
        ("data", str(held), n_eval, 6)
    for mine, split in ((other.base, report.base), (other.adapter, report.adapter)):
        assert mine.scored_tokens == split.scored_tokens
        assert mine.loss == pytest.approx(split.loss, rel=1e-6)
        assert mine.exact_match == split.exact_match and mine.rouge_l == pytest.approx(split.rouge_l)
    assert [e.adapter for e in other.examples] == [e.adapter for e in report.examples]
    assert report.scored_on == "held-out" and report.data_source == "tuneplan:sample-chat"
