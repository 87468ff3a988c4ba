"""UI test fixtures (helpers live in ui_helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ui_helpers import RUNS


@pytest.fixture
def recorded_run(tmp_path):
    """A copy of a recorded run directory (the dashboard never writes, but be safe)."""

    def copy(name: str) -> Path:
        dst = tmp_path / "runs" / name
        shutil.copytree(RUNS / name, dst)
        return dst

    return copy


