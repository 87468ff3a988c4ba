"""`tuneplan eval RUN` as a user runs it: a real process on a trained tiny run, and one line
(exit 2) for each bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiny_runs import tuneplan

RUNS = Path(__file__).resolve().parents[2] / "data" / "runs"


def _recorded(name: str, root: Path) -> Path:
    dst = root / name
    shutil.copytree(RUNS / name, dst)
    return dst


def _one_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_bad_input_is_one_line_each(runs_root):
    _recorded("tiny-crashed", runs_root)
    assert "run tiny-crashed failed" in _one_line(tuneplan(runs_root, "eval", "tiny-crashed"))
    done = _recorded("tiny-done", runs_root)
    cfg = done / "config.toml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("eval_fraction = 0.1", "eval_fraction = 0.0"),
                   encoding="utf-8")
    line = _one_line(tuneplan(runs_root, "eval", "tiny-done"))
    assert "no held-out split" in line and "--data FILE" in line
    assert "--max-examples" in _one_line(tuneplan(runs_root, "eval", "tiny-done", "--max-examples", "0"))
    assert "no readable eval.json" in _one_line(tuneplan(runs_root, "eval", "tiny-done", "--show"))
    assert not (done / "eval.json").exists()


@pytest.mark.slow
def test_unknown_task_is_one_line(runs_root):
    pytest.importorskip("lm_eval")
    _recorded("tiny-done", runs_root)
    # a near miss of the shipped task: lm-eval's own tasks are indexed too, then the close names offered
    line = _one_line(tuneplan(runs_root, "eval", "tiny-done", "--tasks", "tuneplan_sample_arth"))
    assert line.startswith("tuneplan: error: unknown lm-eval task 'tuneplan_sample_arth' (did you mean "
                           "tuneplan_sample_arith")


@pytest.mark.slow
def test_eval_prints_base_and_tuned_and_writes_eval_json(trained_lora_run, tmp_path):
    src, _ = trained_lora_run
    root = tmp_path / "runs"
    shutil.copytree(src, root / src.name)
    run_dir = root / src.name
    out = tuneplan(root, "eval", src.name, "--max-examples", "4", "--max-answers", "3", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{src.name}: LoRA adapter (adapter) beside its base ")
    assert lines[1].startswith("held-out split: 4 examples (") and lines[1].endswith("greedy answers to 3 prompts)")
    header = next(line for line in lines if line.split() == ["base", "tuned", "change"])
    loss = lines[lines.index(header) + 1].split()
    report = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert loss[0] == "loss" and float(loss[1]) == pytest.approx(report["base"]["loss"], abs=1e-4)
    assert float(loss[2]) == pytest.approx(report["adapter"]["loss"], abs=1e-4)
    assert any(line.split()[:2] == ["exact", "match"] for line in lines)
    assert "examples:" in lines and any(line.strip().startswith("reference:") for line in lines)
    assert lines[-1] == f"written to {run_dir / 'eval.json'} and the run card {run_dir / 'adapter' / 'README.md'}"

    # a second eval keeps the first (one line, exit 2); --show prints it; --force replaces it
    before = (run_dir / "eval.json").read_bytes()
    assert "already exists" in _one_line(tuneplan(root, "eval", src.name))
    assert (run_dir / "eval.json").read_bytes() == before
    shown = tuneplan(root, "eval", src.name, "--show")
    assert shown.returncode == 0 and shown.stdout.splitlines()[:3] == lines[:3]
    again = tuneplan(root, "eval", src.name, "--force", "--json", "--max-examples", "2", "--max-new-tokens", "2")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["held_out_examples"] == 2 and json.loads((run_dir / "eval.json").read_text()) == data


def test_a_task_whose_data_is_missing_is_one_line(runs_root, tmp_path):
    pytest.importorskip("lm_eval")
    _recorded("tiny-done", runs_root)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    missing = tmp_path / "missing.jsonl"
    (tasks / "broken.yaml").write_text(
        "task: broken_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {missing}\ntest_split: test\noutput_type: loglikelihood\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: " {{answer}}"\nmetric_list:\n  - metric: acc\n',
        encoding="utf-8")
    line = _one_line(tuneplan(runs_root, "eval", "tiny-done", "--tasks", "broken_local", "--task-path", str(tasks)))
    assert line.startswith("tuneplan: error: lm-eval could not load the data of broken_local: FileNotFoundError")
    assert str(missing) in line


def test_eval_data_bad_input_is_one_line_each(runs_root, tmp_path):
    """`--data` is read and checked before any model loads: one line, exit 2, nothing written."""
    done = _recorded("tiny-done", runs_root)
    cfg = done / "config.toml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("eval_fraction = 0.1", "eval_fraction = 0.0"),
                   encoding="utf-8")
    missing = tmp_path / "missing.jsonl"
    assert _one_line(tuneplan(runs_root, "eval", "tiny-done", "--data", str(missing))) == \
        f"tuneplan: error: --data {missing}: no such file"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n', encoding="utf-8")
    assert "bad.jsonl: columns (foo) fit no accepted format" in \
        _one_line(tuneplan(runs_root, "eval", "tiny-done", "--data", str(bad)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert "no rows" in _one_line(tuneplan(runs_root, "eval", "tiny-done", "--data", str(empty)))
    line = _one_line(tuneplan(runs_root, "eval", "tiny-done", "--data", "someone/no-such-dataset"))
    assert line.startswith("tuneplan: error: --data someone/no-such-dataset: no such local file, and as a Hub "
                           "dataset: offline (HF_HUB_OFFLINE is set)")
    assert "--data" in _one_line(tuneplan(runs_root, "eval", "tiny-done", "--data-split", "test"))
    assert "one local file" in _one_line(tuneplan(runs_root, "eval", "tiny-done", "--data", "tuneplan:sample-chat",
                                                  "--data-split", "test"))
    assert not (done / "eval.json").exists()


@pytest.mark.slow
def test_eval_data_scores_a_run_without_split(trained_lora_run, tmp_path):
    """A run that held nothing out (data.eval_fraction = 0) is evaluated on `--data`: both
    models' loss and perplexity, eval.json names the data, `--show` prints it, and an eval of
    the held-out split is not mistaken for it."""
    from tuneplan.data import SAMPLE_CHAT

    src, _ = trained_lora_run
    root = tmp_path / "runs"
    shutil.copytree(src, root / src.name)
    run_dir = root / src.name
    cfg = run_dir / "config.toml"
    text = cfg.read_text(encoding="utf-8")
    assert "eval_fraction = 0.05" in text
    cfg.write_text(text.replace("eval_fraction = 0.05", "eval_fraction = 0.0"), encoding="utf-8")
    rows = len(SAMPLE_CHAT.read_text(encoding="utf-8").splitlines())

    out = tuneplan(root, "eval", src.name, "--data", "tuneplan:sample-chat", "--max-examples", "4",
                   "--max-answers", "2", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith(f"data: tuneplan:sample-chat: 4 examples of its {rows} rows (")
    assert lines[1].endswith("greedy answers to 2 prompts; not the run's held-out split)")
    report = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert (report["scored_on"], report["data_source"], report["data_split"], report["data_rows"]) == \
        ("data", "tuneplan:sample-chat", "", rows)
    assert report["held_out_examples"] == 4 and report["data_format"] == "chat"
    for side in ("base", "adapter"):
        assert report[side]["loss"] > 0 and report[side]["perplexity"] > 1 and report[side]["scored_tokens"] > 0
    assert report["adapter"]["loss"] < report["base"]["loss"]
    assert any("the run's own training data" in n for n in report["notes"])
    loss = next(line.split() for line in lines if line.startswith("  loss "))
    assert float(loss[1]) == pytest.approx(report["base"]["loss"], abs=1e-4)
    card = (run_dir / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "(other data, not the run's held-out split)" in card

    shown = tuneplan(root, "eval", src.name, "--show")
    assert shown.returncode == 0 and shown.stdout.splitlines()[:2] == lines[:2]
    # kept unless --force, and the refusal says what the kept file scored
    assert "already exists (on tuneplan:sample-chat)" in _one_line(
        tuneplan(root, "eval", src.name, "--data", "tuneplan:sample-chat"))
    small = tmp_path / "two.jsonl"
    small.write_text("".join(json.dumps({"prompt": f"Double {i}.", "completion": str(2 * i)}) + "\n"
                             for i in (3, 4)), encoding="utf-8")
    again = tuneplan(root, "eval", src.name, "--data", str(small), "--force", "--json", "--max-answers", "0")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert (data["data_source"], data["data_rows"], data["held_out_examples"]) == (str(small), 2, 2)
    assert data["adapter"]["generated"] == 0 and data["adapter"]["loss"] is not None
