"""`tuneplan compare`: the bake-off's table and recommendation (fast, on a recorded comparison:
tests/data/compare/README.md), its refusals of bad input, and real CPU runs of the trials
(slow: Ctrl-C and resume, a crashed trial)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from planner.bakeoff import QUALITY_TOLERANCE, BakeoffResult, Recommendation, Trial, recommend
from tiny_runs import ROOT, cli_env, tuneplan, wait_for
from tuneplan.errors import UserError
from tuneplan.services import compare as C

RECORDED = ROOT / "tests" / "data" / "compare" / "tiny-cpu" / "runs"


@pytest.fixture
def recorded(tmp_path):
    """A copy of the recorded runs root: (root, comparison folder, record)."""
    root = tmp_path / "runs"
    shutil.copytree(RECORDED, root)
    folder, record = C.load(root, "latest")
    return root, folder, record


def _eval_losses(root: Path, record: dict) -> dict[str, float]:
    """The tuned models' losses as the recorded eval.json files hold them."""
    out = {}
    for t in record["trials"]:
        report = json.loads((root / t["run"] / "eval.json").read_text(encoding="utf-8"))
        out[t["method"]] = report["adapter"]["loss"]
    return out


# -- recommendation logic --------------------------------------------------------------------------
def test_the_lowest_eval_loss_wins_when_the_others_are_beyond_the_tolerance(recorded):
    root, _, record = recorded
    losses = _eval_losses(root, record)
    trials = [Trial(m, eval_loss=loss, peak_bytes=1, projected_seconds=1.0) for m, loss in losses.items()]
    best = min(losses, key=losses.get)
    far = [replace(t, eval_loss=losses[best] * (1 + 3 * QUALITY_TOLERANCE)) if t.method != best else t
           for t in trials]
    rec = recommend(far)
    assert rec.method == best
    assert "lowest eval loss" in rec.reason and "worse" in rec.reason


def test_within_the_tolerance_the_cheaper_method_wins_and_the_reason_says_so(recorded):
    root, _, record = recorded
    lora = _eval_losses(root, record)["lora"]
    trials = [Trial("lora", eval_loss=lora, peak_bytes=100, projected_seconds=100.0),
              Trial("qlora", eval_loss=lora * (1 + QUALITY_TOLERANCE / 2), peak_bytes=45, projected_seconds=105.0)]
    rec = recommend(trials)
    assert rec.method == "qlora"
    assert rec.reason.startswith("QLoRA is within 0.5% of LoRA's eval loss at 45% of the memory")
    # much slower: the faster one of the same quality wins, and the reason names the time
    slow = [trials[0], replace(trials[1], projected_seconds=200.0)]
    rec = recommend(slow)
    assert rec.method == "lora" and "QLoRA is as good but its full run takes 2x as long" in rec.reason


def test_a_skipped_or_crashed_method_is_named_and_the_others_still_compare(recorded):
    root, _, record = recorded
    losses = _eval_losses(root, record)
    trials = [Trial("lora", eval_loss=losses["lora"]), Trial("qlora", eval_loss=losses["qlora"]),
              Trial("full", skipped="skipped: no configuration of M fits the card")]
    rec = recommend(trials)
    assert rec.method in ("lora", "qlora")
    assert "full fine-tuning: skipped: no configuration" in rec.reason
    assert recommend([Trial("lora", skipped="crashed: killed")]).method is None


# -- the recorded comparison: measurements, table, the planner -------------------------------------
def test_measurements_come_from_the_trial_events(recorded):
    root, _, record = recorded
    for t in record["trials"]:
        m = C.measure_run(root / t["run"])
        assert m["phase"] == "done"
        assert m["tokens_per_second"] > 0 and m["seconds_per_step"] > 0
        assert m["peak_bytes"] > 0 and m["predicted_bytes"] > 0
        # the trainer's epoch counter: steps x epochs per step is the epoch it logged last
        events = [json.loads(x) for x in (root / t["run"] / "events.jsonl").read_text().splitlines()]
        last = [e for e in events if e["kind"] == "log"][-1]
        assert m["epochs_per_step"] * last["step"] == pytest.approx(last["epoch"])
        seconds, cost = C.projected(m, 2.0, 3.0)
        assert seconds == pytest.approx(2.0 / m["epochs_per_step"] * m["seconds_per_step"])
        assert cost == pytest.approx(seconds / 3600 * 3.0)


def test_a_resumed_trial_measures_each_attempt_on_its_own_clock(recorded):
    """A resumed run's `elapsed_seconds` starts again at 0: the seconds per step stay positive
    and are those of the steps, not of the jump across the resume."""
    root, _, record = recorded
    run = root / record["trials"][0]["run"]
    before = C.measure_run(run)
    logs = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    logs = [e for e in logs if e["kind"] == "log"]
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:  # the last steps again, after a resume
        for e in logs[-3:]:
            f.write(json.dumps({**e, "elapsed_seconds": e["elapsed_seconds"] - logs[-4]["elapsed_seconds"]}) + "\n")
    after = C.measure_run(run)
    assert after["seconds_per_step"] > 0
    assert min(before["seconds_per_step"], after["seconds_per_step"]) / max(
        before["seconds_per_step"], after["seconds_per_step"]) > 0.5
    assert recommend([Trial("lora", eval_loss=1.0, projected_seconds=-5.0), Trial("qlora", eval_loss=1.0)]).method


def test_the_table_shows_every_method_its_eval_and_the_recommendation(recorded):
    root, folder, record = recorded
    losses = _eval_losses(root, record)
    C.conclude(record)
    text = C.render(folder, record)
    for method, name in (("lora", "LoRA"), ("qlora", "QLoRA"), ("full", "full fine-tuning")):
        row = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert f"{losses[method]:.4f}" in row
    best = min(losses, key=losses.get)
    assert text.splitlines()[-1].startswith(f"Recommendation: {C.method_name(best)}.")
    assert "rouge_l" in text


def test_a_method_that_did_not_fit_is_a_row_with_its_reason(recorded):
    root, folder, record = recorded
    record["trials"][2] = {"method": "full", "run": None, "argv": [], "phase": None,
                           "skipped": "skipped: no configuration of M fits a 8 GiB GPU"}
    C.conclude(record)
    text = C.render(folder, record)
    assert "full fine-tuning: skipped: no configuration of M fits a 8 GiB GPU" in text
    assert record["recommendation"]["method"] in ("lora", "qlora")


def test_show_prints_a_saved_comparison_and_refuses_an_unknown_id_in_one_line(recorded):
    root, folder, record = recorded
    shown = tuneplan(root, "compare", "--show", folder.name)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == C.render(folder, record)
    bad = tuneplan(root, "compare", "--show", "cmp-nothing")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no comparison 'cmp-nothing'" in bad.stderr


def test_the_plan_explains_the_bake_off_of_its_model_and_dataset(recorded):
    from tuneplan.services import planning

    root, folder, record = recorded
    found = C.find_bakeoff(root, "tuneplan:tiny", str(ROOT / "tuneplan" / "data" / "sample_chat.jsonl"))
    assert found is not None and found.name == folder.name
    assert C.find_bakeoff(root, "tuneplan:tiny", str(RECORDED / "compare")) is None  # another dataset
    outcome = planning.plan(planning.PlanRequest(model="tuneplan:tiny", vram_bytes=8 * 2**30, method="qlora",
                                                 measured=found))
    text = " ".join(outcome.result.reasons)
    assert f"The bake-off on {found.date} ({folder.name}) measured" in text
    assert f"it recommends {C.method_name(found.recommendation.method)}" in text


def test_measured_quality_orders_the_methods():
    worse_qlora = BakeoffResult("2026-01-01", (Trial("lora", eval_loss=1.0), Trial("qlora", eval_loss=1.1)),
                                Recommendation("lora", ""))
    assert worse_qlora.method_order(["lora", "qlora"]) == ["lora", "qlora"]
    better_full = BakeoffResult("2026-01-01", (Trial("lora", eval_loss=1.1), Trial("full", eval_loss=1.0)),
                                Recommendation("full", ""))
    assert better_full.method_order(["lora", "qlora"]) == ["full", "lora", "qlora"]
    worse_lora = BakeoffResult("2026-01-01", (Trial("lora", eval_loss=1.2), Trial("qlora", eval_loss=1.0)),
                               Recommendation("qlora", ""))
    assert worse_lora.method_order(["lora", "qlora"]) == ["qlora", "lora"]


def test_prefer_accuracy_says_why_full_fine_tuning_was_not_planned():
    from tuneplan.services import planning

    outcome = planning.plan(planning.PlanRequest(model="llama-3.1-8b", gpu="rtx-3060-12gb", prefer_accuracy=True))
    assert outcome.result.choice.setup.method != "full"
    assert any(r.startswith("--prefer-accuracy tries full fine-tuning first, but it does not fit")
               for r in outcome.result.reasons)


# -- bad input: one line each ----------------------------------------------------------------------
def test_unknown_method_is_one_line(runs_root):
    with pytest.raises(UserError, match="unknown method 'dora'"):
        C.parse_methods("lora,dora")
    out = tuneplan(runs_root, "compare", "--model", "tuneplan:tiny", "--dataset", "tuneplan:sample-chat",
                   "--methods", "lora,dora")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--methods: unknown method 'dora'" in out.stderr
    assert not (runs_root / C.COMPARE_DIR).exists()


def test_a_model_that_does_not_exist_is_one_line(runs_root):
    out = tuneplan(runs_root, "compare", "--model", "no-such-model-anywhere", "--dataset", "tuneplan:sample-chat")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no-such-model-anywhere" in out.stderr
    assert not (runs_root / C.COMPARE_DIR).exists()


def test_a_dataset_that_does_not_exist_is_one_line(runs_root, tmp_path):
    out = tuneplan(runs_root, "compare", "--model", "tuneplan:tiny", "--dataset", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nope.jsonl" in out.stderr
    assert not (runs_root / C.COMPARE_DIR).exists()


# -- real trials on the CPU ------------------------------------------------------------------------
def _start_compare(runs_root: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuneplan", "compare", "--model", "tuneplan:tiny",
                             "--dataset", "tuneplan:sample-chat", "--max-samples", "120", "--eval-examples", "6", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=cli_env(runs_root))


def _trial_dir(runs_root: Path, method: str) -> Path | None:
    found = [p for p in runs_root.glob(f"cmp-*-{method}") if (p / "events.jsonl").is_file()]
    return found[0] if found else None


def _training(run_dir: Path | None) -> bool:
    return run_dir is not None and '"kind":"log"' in (run_dir / "events.jsonl").read_text(encoding="utf-8")


@pytest.mark.slow
def test_ctrl_c_stops_the_trial_and_resume_finishes_the_bake_off(runs_root, tiny_model):
    proc = _start_compare(runs_root, "--methods", "lora,qlora", "--max-steps", "6")
    lora = wait_for(lambda: _training(_trial_dir(runs_root, "lora")) and _trial_dir(runs_root, "lora"), 240,
                    "the LoRA trial to train")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    folder, record = C.load(runs_root, "latest")
    assert f"tuneplan compare --resume {folder.name}" in err
    assert json.loads((lora / "status.json").read_text())["phase"] == "stopped"
    assert record["trials"][0]["run"] == lora.name and record["finished"] is False

    done = tuneplan(runs_root, "compare", "--resume", folder.name)
    assert done.returncode == 0, done.stderr
    folder, record = C.load(runs_root, folder.name)
    assert record["finished"] and [t["phase"] for t in record["trials"]] == ["done", "done"]
    assert record["trials"][0]["run"] == lora.name  # the same run, resumed from its checkpoint
    for t in record["trials"]:
        report = json.loads((runs_root / t["run"] / "eval.json").read_text())
        assert t["eval"]["eval_loss"] == report["adapter"]["loss"]
    assert record["recommendation"]["method"] in ("lora", "qlora")
    assert C.render(folder, record) in done.stdout
    # each trial is a normal run: `tuneplan runs` lists it
    listed = tuneplan(runs_root, "runs")
    assert all(t["run"] in listed.stdout for t in record["trials"])


@pytest.mark.slow
def test_a_crashed_trial_is_one_line_and_the_others_keep_their_results(runs_root, tiny_model):
    proc = _start_compare(runs_root, "--methods", "full,lora", "--max-steps", "40")
    full = wait_for(lambda: _training(_trial_dir(runs_root, "full")) and _trial_dir(runs_root, "full"), 240,
                    "the full trial to train")
    status = json.loads((full / "status.json").read_text())
    for pid in status["pids"]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    crash_lines = [line for line in err.splitlines() if line.startswith("[full] crashed")]
    assert len(crash_lines) == 1 and "(the other trials go on)" in crash_lines[0]
    folder, record = C.load(runs_root, "latest")
    full_t, lora_t = record["trials"]
    assert full_t["skipped"].startswith("crashed") and lora_t["phase"] == "done"
    assert lora_t["eval"]["eval_loss"] is not None
    assert record["recommendation"]["method"] == "lora"
    assert "full fine-tuning: crashed" in out


def test_the_wizard_plan_explains_the_bake_off_too(recorded, monkeypatch):
    from tuneplan.data import SAMPLE_CHAT
    from tuneplan.services.dataset_preview import preview_dataset
    from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter
    from tuneplan.ui.target import dry_run_target

    root, folder, _ = recorded
    monkeypatch.setenv("TUNEPLAN_RUNS_DIR", str(root))
    plan = PlanningAdapter().plan(ModelsAdapter().resolve("tuneplan:tiny"), dry_run_target("4GiB"),
                                  preview_dataset(str(SAMPLE_CHAT)), {})
    assert any(r.startswith("The bake-off on") and folder.name in r for r in plan.reasons)
    monkeypatch.setenv("TUNEPLAN_RUNS_DIR", str(root / "elsewhere"))  # no comparison there: no such reason
    plan = PlanningAdapter().plan(ModelsAdapter().resolve("tuneplan:tiny"), dry_run_target("4GiB"),
                                  preview_dataset(str(SAMPLE_CHAT)), {})
    assert not any("bake-off" in r for r in plan.reasons)


def test_every_trial_gets_the_same_data_seed_batch_and_token_budget(runs_root):
    """Planning only (no trial starts): --tokens becomes the same optimizer steps for all."""
    import argparse
    import math

    from tuneplan.commands import compare as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "tuneplan:tiny", "--dataset", "tuneplan:sample-chat", "--tokens", "20000",
                              "--methods", "lora,qlora,full", "--seed", "7", "--runs-dir", str(runs_root)])
    folder, record = command._plan_trials(args, ("lora", "qlora", "full"), runs_root)
    steps = math.ceil(20000 / (record["effective_batch"] * record["seq_len"]))
    assert record["max_steps"] == steps and record["seed"] == 7
    planned = []
    for trial in record["trials"]:
        assert trial["skipped"] is None and trial["run"] is None
        config, _, _ = command.prepare_trial(trial["argv"])
        planned.append(config)
        assert config.setup.method == trial["method"]
    assert {c.training.max_steps for c in planned} == {steps}
    assert {c.training.seed for c in planned} == {7}
    assert {c.setup.seq_len for c in planned} == {record["seq_len"]}
    assert {c.effective_batch() for c in planned} == {record["effective_batch"]}
    assert {c.data.eval_fraction for c in planned} == {0.1}
    assert len({c.data.source for c in planned}) == 1
    assert C.load(runs_root, folder.name)[1] == record  # saved before any trial starts
    assert not [p for p in runs_root.iterdir() if p.name != C.COMPARE_DIR]  # and no run was made


def test_an_eval_json_of_other_data_is_not_compared(recorded, capsys):
    """A trial whose eval.json scored `tuneplan eval --data` rows (not the split the trials share)
    is not put in the table: the trial says why and how to evaluate the split."""
    from tuneplan.commands.compare import _evaluate_all

    root, folder, record = recorded
    trial = next(t for t in record["trials"] if t.get("phase") == "done" and not t.get("skipped"))
    path = root / trial["run"] / "eval.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    report.update(scored_on="data", data_source="/elsewhere/other.jsonl", data_rows=3)
    path.write_text(json.dumps(report), encoding="utf-8")
    trial.pop("eval", None)
    _evaluate_all(folder, record, root)
    assert "eval" not in trial
    assert trial["eval_error"].endswith(f"scored /elsewhere/other.jsonl (--data), not the held-out split: "
                                        f"`tuneplan eval {trial['run']} --force` evaluates the split")
    assert C.load(root, "latest")[1]["trials"][record["trials"].index(trial)]["eval_error"] == trial["eval_error"]
