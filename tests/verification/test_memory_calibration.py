"""The calibration case loader (verification/memory_calibration.py): a case's stack and its own
fields become planner inputs, split by name into the `TrainSetup` knobs and the
`CalibrationProfile` of the stack. The planner against the cases is
tests/planner/test_calibration.py.
"""

from __future__ import annotations

import pytest

from planner.setup import TUNEPLAN_STACK, CalibrationProfile, TrainSetup
from verification.memory_calibration import case_setup, load_cases, setup_and_profile


def test_a_stack_splits_into_knobs_and_profile_by_field_name():
    setup, profile = setup_and_profile({"lora_rank": 8, "lora_targets": ["q_proj", "v_proj"], "autocast": False,
                                        "loss_impl": "chunked"})
    assert setup == TrainSetup(lora_rank=8, lora_targets=("q_proj", "v_proj"))
    assert profile == CalibrationProfile(autocast=False, loss_impl="chunked")
    assert setup_and_profile({}) == (TrainSetup(), TUNEPLAN_STACK)
    with pytest.raises(ValueError, match=r"^M1: unknown TrainSetup or CalibrationProfile fields \['lora_rnak'\]$"):
        setup_and_profile({"lora_rnak": 8}, "M1")


def test_a_case_overrides_its_stack_and_passes_the_profile_to_the_estimate():
    stacks = {"s": {"_why": "notes are skipped", "autocast": False, "micro_batch": 4, "padded_rows": False}}
    setup, extra = case_setup({"id": "M1", "stack": "s", "setup": {"micro_batch": 2, "adapter_dtype": "bfloat16"}},
                              stacks)
    assert setup == TrainSetup(micro_batch=2)
    assert extra == {"padded_rows": False, "profile": CalibrationProfile(autocast=False, adapter_dtype="bfloat16")}


def test_every_published_case_loads():
    data = load_cases()
    for case in data["cases"]:
        setup, extra = case_setup(case, data["stacks"])
        assert isinstance(setup, TrainSetup) and isinstance(extra["profile"], CalibrationProfile)
    # the litgpt rows describe a stack other than ours
    assert any(case_setup(c, data["stacks"])[1]["profile"] != TUNEPLAN_STACK for c in data["cases"])
