"""The memory model against published GPU measurements (/work/shared/data/measured.csv).

The rows are re-expressed as planner inputs in tests/data/calibration/cases.json: each
names its training stack (TrainSetup fields) and the statistic it measured, so the test
compares like with like (max_memory_allocated vs reserved vs nvidia-smi; GB vs GiB). Rows
not used are listed there with the reason.

Stated tolerances (the target: median <= 5%, none over 12%), each a little above what
the model achieves (bench/bench_memory_calibration.py prints the figures):
- series whose stack is ours (transformers + peft: the PEFT method-comparison runs):
  median |error| <= 5%, worst <= 12% (achieved 0.5% / 8.0%);
- litgpt-2023 (A100, lit-gpt 8641822, bitsandbytes 0.41.1, LoRA and QLoRA): median <= 3%,
  worst <= 4% (achieved 2.4% / 2.6%);
- litgpt-2024 LoRA (A10G config-hub rows): median <= 2%, worst <= 4% (achieved 0.4% / 3.3%);
- litgpt-2024 QLoRA (A10G config-hub rows): a known, unexplained under-prediction (median
  -11.6%, worst -17.6%): every row is short by about 12-17 bytes per hidden element per token
  per layer, q,v-only and all-linear, MHA and GQA, SDPA and eager alike, while the same
  model's LoRA rows and the 2023 QLoRA rows fit. The mechanism is not in the litgpt, Lightning
  and bitsandbytes code read so far (see tests/data/calibration/cases.json, `open_questions`).
  The test pins it (median <= 13%, worst <= 19%, always under) so a regression or a fix shows;
- out-of-memory rows: the predicted device memory exceeds the card.
"""

from __future__ import annotations

import pytest

from verification.memory_calibration import MEDIAN_TOLERANCE, WORST_TOLERANCE, load_cases, predict, run_all, series_summary


@pytest.fixture(scope="module")
def results():
    return run_all()


@pytest.fixture(scope="module")
def by_id(results):
    return {r.id: r for r in results}


def test_every_case_is_well_formed():
    data = load_cases()
    ids = [c["id"] for c in data["cases"]]
    assert len(ids) == len(set(ids))
    assert data["excluded"], "excluded rows must be listed with their reason"
    for c in data["cases"]:
        assert c["measures"] in ("allocated", "reserved", "reserved_minus_init", "nvidia_smi", "oom"), c["id"]
        assert c["stack"] in data["stacks"], c["id"]
        predict(c, data["stacks"])  # builds a valid TrainSetup and a catalog model


def test_our_stack_series_within_stated_tolerance(results):
    summary = series_summary(results)
    ours = [s for s in summary if s.startswith("peft-method-comparison")]
    assert ours
    for s in ours:
        assert summary[s]["median_abs"] <= MEDIAN_TOLERANCE, (s, summary[s])
        assert summary[s]["worst_abs"] <= WORST_TOLERANCE, (s, summary[s])


LITGPT_TOLERANCE = {  # series -> (median |error|, worst |error|), see the module docstring
    "litgpt-2023 (A100, allocated)": (0.03, 0.04),
    "litgpt-2024 (A10G, allocated)": (0.02, 0.04),
    "litgpt-2024 QLoRA (A10G, allocated)": (0.13, 0.19),
}


def test_litgpt_series_within_stated_tolerance(results):
    summary = series_summary(results)
    assert {s for s in summary if s.startswith("litgpt") and "OOM" not in s} == set(LITGPT_TOLERANCE)
    for s, (median, worst) in LITGPT_TOLERANCE.items():
        assert summary[s]["median_abs"] <= median, (s, summary[s])
        assert summary[s]["worst_abs"] <= worst, (s, summary[s])
    # the open question stays visible: the 2024 QLoRA rows are all under-predicted
    assert all(r.error < 0 for r in results if r.series == "litgpt-2024 QLoRA (A10G, allocated)")


def test_out_of_memory_rows_are_predicted_not_to_fit(results):
    ooms = [r for r in results if r.measures == "oom"]
    assert len(ooms) >= 4
    for r in ooms:
        assert r.predicted_bytes > r.measured_bytes, r


def test_published_orderings_come_out(by_id):
    # double quantization saves what the absmax constants cost (litgpt 7B and 13B tables)
    for no_dq, dq in (("M012", "M013"), ("M017", "M018")):
        saved_measured = by_id[no_dq].measured_bytes - by_id[dq].measured_bytes
        saved_predicted = by_id[no_dq].predicted_bytes - by_id[dq].predicted_bytes
        assert saved_predicted == pytest.approx(saved_measured, rel=0.15)
    # the second sequence of a micro-batch costs what the table shows (activations + logits)
    grow_measured = by_id["M014"].measured_bytes - by_id["M011"].measured_bytes
    grow_predicted = by_id["M014"].predicted_bytes - by_id["M011"].predicted_bytes
    assert 0.6 * grow_measured < grow_predicted < 1.2 * grow_measured
    # TinyLlama at the same micro-batch: QLoRA needs MORE than LoRA (litgpt table, M065/M066):
    # the 4-bit matmuls of that bitsandbytes kept their inputs, the activations and logits do not
    # shrink, and the saved weights are small for a 1.1B model
    assert by_id["M066"].measured_bytes > by_id["M065"].measured_bytes
    assert by_id["M066"].predicted_bytes > by_id["M065"].predicted_bytes
    # rank 64 vs 32 on q,v moves reserved memory only a little (PEFT comparison)
    assert by_id["P034"].predicted_bytes > by_id["P033"].predicted_bytes
    assert by_id["P034"].predicted_bytes - by_id["P033"].predicted_bytes < 0.03 * by_id["P033"].predicted_bytes
