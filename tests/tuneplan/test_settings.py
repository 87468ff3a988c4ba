"""The run settings registry (`tuneplan.settings`, declared on `tuneplan.config`'s sections):
every hyperparameter is a setting, its flag reaches the run configuration, its rule names the key."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from tuneplan.config import SETTINGS, ConfigError, RunConfig, TrainingConfig
from tuneplan.settings import COUNT, NUMBER


def _train(*argv: str):
    from tuneplan.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train, parser.parse_args(["--model", "/m", "--dataset", "d.jsonl", *argv])


def test_every_hyperparameter_is_a_setting():
    assert {f.name for f in fields(TrainingConfig)} == {s.name for s in SETTINGS if s.section == "training"}
    flags = [s.flag for s in SETTINGS if s.flag]
    assert len(flags) == len(set(flags))


def _sample(s):
    """A valid value of setting `s` other than its default, and how its flag spells it."""
    default = getattr(getattr(RunConfig(), s.section), s.name)
    if s.kind == COUNT:
        v = (default or 1) + 1
        return v, str(v)
    if s.kind == NUMBER:
        v = 0.25 if s.hi is not None else (default or 1) * 2
        return v, repr(v)
    if s.choices:
        v = next(c for c in s.choices if c != default)
        return v, v
    if s.kind == "duration":
        return "30m", "30m"
    if s.kind == "url":
        return "https://example.org/hook", "https://example.org/hook"
    return True, None  # a switch: the flag alone


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.flag], ids=lambda s: s.key)
def test_each_flag_reaches_its_config_key(s):
    """`tuneplan train --FLAG VALUE` sets the run configuration's `section.field` (generated: one
    flag per setting that declares one)."""
    value, text = _sample(s)
    train, args = _train(s.flag, *([text] if text is not None else []))
    config = train.build_config(args)
    assert getattr(getattr(config, s.section), s.name) == value


@pytest.mark.parametrize("key, value, message", [
    ("training.learning_rate", 0, "training.learning_rate must be > 0 (got 0)"),
    ("training.learning_rate", 11.0, "training.learning_rate must be at most 10 (got 11.0)"),
    ("training.warmup_ratio", 1.0, "training.warmup_ratio must be in [0, 1) (got 1.0)"),
    ("training.seed", -1, "training.seed must be >= 0 (got -1)"),
    ("training.max_grad_norm", float("nan"), "training.max_grad_norm must be a finite number (got nan)"),
    ("training.save_every", "soon", "training.save_every must be a duration such as 30m"),
    ("training.report_to", "tb", "training.report_to must be one of none, tensorboard"),
    ("recovery.max_retries", -1, "recovery.max_retries must be >= 0 (got -1)"),
    ("notify.url", "ftp://x", "notify.url must be an http:// or https:// URL (got 'ftp://x')"),
    ("notify.url", "https://u:secret@x.org/h", "notify.url must not hold a user name or password"),
    ("data.eval_fraction", 1, "data.eval_fraction must be in [0, 1) (got 1)"),
])
def test_each_rule_names_the_key_and_the_value(key, value, message):
    from dataclasses import replace

    section, name = key.split(".")
    config = RunConfig()
    config = replace(config, model=replace(config.model, source="m"), data=replace(config.data, source="d"))
    config = replace(config, **{section: replace(getattr(config, section), **{name: value})})
    with pytest.raises(ConfigError) as exc:
        config.validate()
    assert str(exc.value).startswith(message)
