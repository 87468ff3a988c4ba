"""The knob registry: one declaration per knob, the same flags on every command, one reading of
a flag value, and an equivalent command line that gives back the same setup."""

from __future__ import annotations

import re
import shlex
from dataclasses import fields

import pytest

from planner.setup import TrainSetup
from tuneplan import knobs
from tuneplan.cli import build_parser
from tuneplan.commands import train
from tuneplan.errors import UserError


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_every_knob_is_a_setup_field_and_every_list_comes_from_the_registry():
    names = {f.name for f in fields(TrainSetup)}
    assert {k.name for k in knobs.KNOBS} == names  # how other stacks differ is planner.setup.CalibrationProfile
    assert len({k.flag for k in knobs.KNOBS}) == len(knobs.KNOBS), "one flag per knob"
    from tuneplan.services import planning, presets

    assert knobs.RUN_KNOBS == presets.SETUP_KEYS == tuple(k.name for k in knobs.KNOBS if k.in_files)
    assert planning.FIXABLE == knobs.FIXABLE and set(presets.REFITTED) <= set(knobs.PLANNED)
    assert "cpu_offload" in knobs.RUN_KNOBS  # a knob of tuneplan's FSDP path


@pytest.mark.parametrize("command", ["plan", "train", "probe"])
def test_every_command_takes_every_knob_flag_and_the_old_dtype_spelling(command):
    parser_help = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    for k in knobs.KNOBS:
        assert k.flag in parser_help, (command, k.flag)
    assert "--dtype" not in parser_help.replace("--compute-dtype", "")  # hidden alias
    args = _parse(command, "--dtype", "bf16")
    assert knobs.PartialSetup.from_args(args).fixed() == {"compute_dtype": "bfloat16"}


def test_flag_values_are_read_once_with_one_line_errors():
    assert knobs.BY_NAME["micro_batch"].parse("1_024") == 1024
    assert knobs.BY_NAME["grad_checkpointing"].parse("AUTO") is None
    assert knobs.BY_NAME["fused_ce"].parse("yes") is True
    assert knobs.BY_NAME["lora_targets"].parse("attention") == "attention"
    for name, text, words in [("micro_batch", "0", "--batch must be > 0"),
                              ("lora_rank", "two", "--lora-r must be a whole number"),
                              ("lora_dropout", "1.5", "--lora-dropout must be in [0, 1)"),
                              ("lora_dropout", "nan", "--lora-dropout must be in [0, 1)"),
                              ("compute_dtype", "int8", "--compute-dtype must be one of auto, bfloat16"),
                              ("packing", "maybe", "--packing must be auto, on or off")]:
        with pytest.raises(UserError, match=re.escape(words)) as exc:
            knobs.BY_NAME[name].parse(text)
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize("setup", [
    TrainSetup(method="qlora", quant_type="fp4", double_quant=False, lora_targets="attention", micro_batch=3,
               grad_accum=5, seq_len=1536, packing=False, grad_checkpointing=False, optimizer="paged-adamw-8bit",
               attn="eager", fused_ce=True, compute_dtype="float16", lora_dropout=0.1),
    TrainSetup(method="full", num_gpus=2, strategy="fsdp", cpu_offload=True, lora_targets=("q_proj", "v_proj")),
])
def test_the_equivalent_flags_give_back_the_same_setup_through_the_train_parser(setup):
    args = _parse("train", "--model", "m", "--dataset", "d", *shlex.split(shlex.join(knobs.equivalent_flags(setup))))
    given = train.given_setup(args)
    assert given.auto() == []  # nothing left for the planner
    rebuilt = given.apply(TrainSetup())
    compared = [k.name for k in knobs.KNOBS
                if not (setup.method == "full" and k.group in (knobs.LORA, knobs.QLORA))]
    assert {k: getattr(rebuilt, k) for k in compared} == {k: getattr(setup, k) for k in compared}


def test_a_flag_given_as_auto_hands_a_file_knob_back_to_the_planner():
    file = knobs.PartialSetup({"attn": "eager", "micro_batch": 4})
    given = train.given_setup(_parse("train", "--attn", "auto", "--seq-len", "512"), file)
    assert given.fixed() == {"micro_batch": 4, "seq_len": 512}
    assert "attn" in given.auto() and "micro_batch" not in given.auto()


def test_a_bad_setup_value_names_the_field_in_one_line():
    from tuneplan.config import ConfigError, validate_setup

    with pytest.raises(ConfigError, match=r"^setup\.quant_type must be nf4 or fp4 \(got 'int4'\)$"):
        validate_setup(TrainSetup(quant_type="int4"))
    with pytest.raises(ConfigError, match=r"^setup\.lora_dropout must be in \[0, 1\) \(got 1.0\)$"):
        validate_setup(TrainSetup(lora_dropout=1.0))


def test_the_wizard_rows_are_declared_with_their_knobs():
    """Each screen knob has its own row place; a row's options are valid values of its knob and
    a choice row offers every value its flag takes (the method in its own order and labels)."""
    rows = [k.screen_row for k in knobs.SCREEN_KNOBS]
    assert rows == sorted(set(rows)) and len(rows) == sum(1 for k in knobs.KNOBS if k.screen)
    for k in knobs.SCREEN_KNOBS:
        options = k.screen_options()
        assert bool(options) == (k.kind != knobs.COUNT), k.name
        assert all(k.problem(value) is None for _, value in options), k.name
        if k.kind == knobs.CHOICE:
            assert sorted(v for _, v in options) == sorted(k.choices), k.name
    assert knobs.BY_NAME["method"].screen_options()[1] == ("QLoRA 4-bit", "qlora")
    assert knobs.BY_NAME["grad_checkpointing"].screen_options() == (("on", True), ("off", False))
    assert [v for _, v in knobs.BY_NAME["lora_targets"].screen_options()] == ["all-linear", "attention"]


def test_the_effective_batch_rule():
    """One rule for the plan, `train`, the preset re-fit and the plan screen: given, else
    micro-batch x accumulation, else 16 (a multiple of a fixed accumulation); a micro-batch edit
    moves the accumulation to keep it."""
    from tuneplan.knobs import accumulation, effective_batch

    assert effective_batch() == 16 and effective_batch(given=48) == 48
    assert effective_batch(4, 2) == 8 and effective_batch(4, 2, given=8) == 8
    assert effective_batch(grad_accum=3) == 15 and effective_batch(grad_accum=32) == 32
    assert effective_batch(micro_batch=5) == 16
    assert accumulation(16, 4) == 4 and accumulation(16, 3) == 5 and accumulation(16, 64) == 1
