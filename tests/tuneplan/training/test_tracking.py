"""Experiment tracking through the trainer's own `report_to`: TensorBoard for real (event files
in the run directory, the loss read back), trackio offline, and the one-line error for a
tracker that is not installed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tiny_runs import tiny_config
from tuneplan.errors import UserError
from tuneplan.events import TENSORBOARD_DIR, read_events
from tuneplan.services.launcher import prepare_run
from tuneplan.training.runner import run_worker

FAST = {"max_steps": 6, "logging_steps": 1, "save_steps": 100}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="pip install tensorboard")
def test_tensorboard_event_files_hold_the_loss_and_the_plan(tiny_model, runs_root, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "unset")  # restored after the in-process worker sets it
    config = tiny_config(tiny_model, training={**FAST, "report_to": "tensorboard"}, data={"eval_fraction": 0.0})
    run_dir = prepare_run(config, runs_root)
    assert run_worker(run_dir, install_signals=False).exit_code == 0

    logged = [(e.step, e.loss) for e in read_events(run_dir) if e.kind == "log"]
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = [(s.step, s.value) for s in acc.Scalars("train/loss")]
    assert [s for s, _ in scalars] == [s for s, _ in logged] == list(range(1, 7))
    for (_, tb), (_, ev) in zip(scalars, logged):
        assert tb == pytest.approx(ev, rel=1e-6)  # TensorBoard stores float32
    plan_tag = next(t for t in acc.Tags()["tensors"] if t.startswith("tuneplan/plan"))
    text = acc.Tensors(plan_tag)[0].tensor_proto.string_val[0].decode()
    plan = json.loads(text.strip("`").removeprefix("json"))
    assert plan["run_name"] == run_dir.name
    assert plan["config"]["training"]["report_to"] == "tensorboard"
    assert plan["config"]["setup"]["micro_batch"] == 4
    assert plan["predicted_memory"]["torch_peak_bytes"] is not None
    assert not (run_dir / "checkpoints" / "runs").exists()  # not the trainer's default folder


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="pip install trackio")
def test_trackio_logs_offline(tiny_model, runs_root, tmp_path, monkeypatch):
    """trackio with no Space: a local SQLite database, no network (HF_HUB_OFFLINE in the tests).
    A real detached run: trackio reads TRACKIO_DIR when it is first imported."""
    from tuneplan.services.launcher import launch, wait_for_phase

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    config = tiny_config(tiny_model, training={**FAST, "report_to": "trackio"}, data={"eval_fraction": 0.0})
    run_dir = launch(config, runs_root)
    assert wait_for_phase(run_dir, ("done", "failed", "crashed"), 180).phase == "done", \
        (run_dir / "train.log").read_text()[-3000:]
    import sqlite3

    dbs = list((tmp_path / "trackio").rglob("*.db"))
    assert dbs, list((tmp_path / "trackio").rglob("*"))
    con = sqlite3.connect(dbs[0])
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    rows = con.execute("select * from metrics").fetchall() if "metrics" in tables else []
    text = json.dumps([list(map(str, r)) for r in rows])
    assert run_dir.name in text and "train/loss" in text
    configs = con.execute("select * from configs").fetchall() if "configs" in tables else []
    assert "predicted_memory" in json.dumps([list(map(str, r)) for r in configs])


def test_a_tracker_that_is_not_installed_is_one_line_before_launch(tiny_model, runs_root, monkeypatch):
    import tuneplan.services.tracking as tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a))
    for name in ("wandb", "mlflow"):
        with pytest.raises(UserError, match=f"needs the {name} package.*pip install {name}") as exc:
            prepare_run(tiny_config(tiny_model, training={"report_to": name}), runs_root)
        assert "\n" not in str(exc.value)
    assert list(runs_root.iterdir()) == []  # nothing written


def test_report_to_is_validated_and_travels_in_configs_and_presets(tiny_model, tmp_path):
    from tuneplan.config import ConfigError, config_from_dict, config_to_dict
    from tuneplan.services import presets

    config = tiny_config(tiny_model, training={"report_to": "tensorboard"})
    assert config_from_dict(config_to_dict(config)).training.report_to == "tensorboard"
    with pytest.raises(ConfigError, match=r"training.report_to must be one of none, tensorboard.*\(got 'comet'\)"):
        config_from_dict({**config_to_dict(config), "training": {"report_to": "comet"}})
    text = presets.preset_from_run_config(config, "tb")
    assert presets.preset_from_toml(text, "tb.toml").config.training.report_to == "tensorboard"


def test_train_flag_sets_report_to(tiny_model):
    from tuneplan.cli import build_parser
    from tuneplan.commands import train

    args = build_parser().parse_args(["train", "--model", str(tiny_model), "--dataset", "x.jsonl",
                                      "--report-to", "tensorboard"])
    assert train.build_config(args).training.report_to == "tensorboard"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--report-to", "comet"])
