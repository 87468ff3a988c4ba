"""70-75 W boards (T4, L4) are rated at their sustained tensor rate, not the boost-clock peak:
a T4 is not predicted to out-train an RTX 3060 on the same QLoRA plan."""

from __future__ import annotations

from dataclasses import replace

from planner.catalog import load_spec
from planner.gpus import LOW_POWER_SUSTAINED, get_gpu
from planner.solver import Constraints, Hardware, solve
from planner.throughput import estimate_throughput


def test_low_power_cards_are_derated_from_their_datasheet():
    assert 0 < LOW_POWER_SUSTAINED < 1
    assert get_gpu("t4").bf16_tflops < 65.0 and get_gpu("l4").bf16_tflops < 121.0
    assert get_gpu("a10").bf16_tflops == 125.0  # a 150 W card keeps its datasheet rate


def test_t4_is_not_predicted_faster_than_a_3060_for_the_same_qlora_plan():
    spec = load_spec("llama-3.1-8b")
    r = solve(spec, Hardware(get_gpu("rtx-3060-12gb")), Constraints(method="qlora"))
    setup = replace(r.choice.setup, compute_dtype="float16")  # the T4 has no bf16: same plan in fp16
    t4 = estimate_throughput(spec, setup, get_gpu("t4")).tokens_per_second
    rtx = estimate_throughput(spec, r.choice.setup, get_gpu("rtx-3060-12gb")).tokens_per_second
    assert t4 <= 1.15 * rtx, (t4, rtx)
