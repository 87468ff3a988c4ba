"""Run configuration: TOML round trip and validation messages."""

from __future__ import annotations

import pytest

from planner.setup import TrainSetup
from tuneplan.config import (
    ConfigError, DataConfig, ModelConfig, RunConfig, TrainingConfig, config_from_dict, config_to_dict, load_config,
    save_config,
)


def _config() -> RunConfig:
    return RunConfig(model=ModelConfig(source="/m"), data=DataConfig(source="d.jsonl"),
                     setup=TrainSetup(method="qlora", lora_targets=("q_proj", "v_proj"), micro_batch=2),
                     training=TrainingConfig(max_steps=10), name="r1")


def test_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    save_config(_config(), path)
    assert load_config(path) == _config()
    with pytest.raises(ConfigError, match="already exists"):
        save_config(_config(), path)


@pytest.mark.parametrize("data, message", [
    ({"training": {"learning_rate": 0}}, r"training.learning_rate must be > 0 \(got 0.0\)"),
    ({"setup": {"micro_batch": 0}}, r"setup.micro_batch must be > 0 \(got 0\)"),
    ({"setup": {"method": "dora"}}, r"setup.method must be one of full, lora, qlora \(got 'dora'\)"),
    ({"setup": {"lora_rank": 2.5}}, r"setup.lora_rank must be a whole number \(got 2.5\)"),
    ({"setup": {"packing": "yes"}}, r"setup.packing must be true or false"),
    ({"training": {"lr": 1}}, r"unknown key training.lr"),
    ({"model": {"source": ""}}, r"model.source must name a model"),
])
def test_validation_names_field_and_value(data, message):
    base = {"model": {"source": "/m"}, "data": {"source": "d.jsonl"}}
    for section, table in data.items():
        base[section] = {**base.get(section, {}), **table}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(base)


def test_run_config_errors_name_file_line_key_and_the_closest_key(tmp_path):
    """Run configs go through the presets' typed loader: file:line, the key, the closest match."""
    path = tmp_path / "run.toml"
    text = '[model]\nsource = "/m"\n[data]\nsource = "d.jsonl"\n[setup]\nmethod = "lora"\nmicro_bach = 2\n'
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}:7: unknown key setup.micro_bach; did you mean micro_batch\?$"):
        load_config(path)
    path.write_text(text.replace("micro_bach = 2", 'lora_targets = ["q_proj", 3]'))
    with pytest.raises(ConfigError, match=rf"^{path}:7: setup.lora_targets must be a list of strings or a string"):
        load_config(path)
    path.write_text(text.replace("micro_bach = 2", "lora_dropout = 0").replace("[data]", "[dta]"))
    with pytest.raises(ConfigError, match=rf"^{path}:3: unknown key dta; did you mean data\?$"):
        load_config(path)
    path.write_text(text.replace("micro_bach = 2", "lora_dropout = 0"))
    assert load_config(path).setup.lora_dropout == 0.0 and isinstance(load_config(path).setup.lora_dropout, float)


def test_malformed_toml_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_calibration_profile_fields_are_unknown_keys_in_run_configs(tmp_path):
    """How another training stack differs (planner.setup.CalibrationProfile) is not a run-config
    knob: the file's `[setup]` holds exactly the registry's knobs, and a profile field is an
    unknown key like any other."""
    from dataclasses import fields

    from planner.setup import CalibrationProfile
    from tuneplan.config import config_to_dict
    from tuneplan.knobs import RUN_KNOBS

    assert set(config_to_dict(_config())["setup"]) <= set(RUN_KNOBS)
    assert not {f.name for f in fields(CalibrationProfile)} & {f.name for f in fields(TrainSetup)}
    path = tmp_path / "run.toml"
    path.write_text('[model]\nsource = "/m"\n[data]\nsource = "d.jsonl"\n[setup]\nmethod = "lora"\nautocast = false\n')
    with pytest.raises(ConfigError, match=rf"^{path}:7: unknown key setup.autocast; "):
        load_config(path)


def test_run_configs_of_earlier_versions_still_load():
    """Earlier tuneplan versions wrote `autocast = true` and `loss_upcast = true` into every
    run configuration (tests/data/runs keeps two such runs): at tuneplan's own values they are
    dropped, so those runs still resume; another value stays an unknown key."""
    from pathlib import Path

    old = Path(__file__).resolve().parents[1] / "data" / "runs" / "tiny-done" / "config.toml"
    text = old.read_text()
    assert "autocast = true" in text and "loss_upcast = true" in text
    assert load_config(old).setup.method == "lora"
    assert "autocast" not in config_to_dict(load_config(old))["setup"]  # and are not written again

def test_a_retired_key_at_another_value_is_still_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nsource = "/m"\n[data]\nsource = "d.jsonl"\n[setup]\nloss_upcast = 1\n')
    with pytest.raises(ConfigError, match="unknown key setup.loss_upcast"):
        load_config(path)  # 1 is not tuneplan's `true`: the file describes something else
