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
    assert "no held-out split" in _one_line(tuneplan(runs_root, "eval", "tiny-done"))
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
