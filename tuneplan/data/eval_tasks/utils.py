"""The data of the shipped lm-evaluation-harness task (`tuneplan_sample_arith.yaml`, whose
`custom_dataset: !function utils.sample_arith` names this function): rows read from the
JSONL file beside it, so the task needs no download. Loaded by lm-eval, never imported by
tuneplan itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def sample_arith(**_metadata: Any):
    """`{"test": Dataset}` of {question, answer} rows (lm-eval passes the task's metadata)."""
    import datasets

    lines = (HERE / "sample_arith.jsonl").read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(x) for x in lines if x.strip()])})
