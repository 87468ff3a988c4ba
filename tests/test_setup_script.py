"""scripts/setup.sh, run for real with pip faked at the interpreter boundary (a stub `python`
that records the calls and prints a setuptools-style warning block): each step is announced,
pip's noise goes to .venv/setup.log, and a failing step shows the log's tail and exits 1."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE = "SetuptoolsDeprecationWarning: a warning block nobody asked for"

VENV_PYTHON = f"""#!/usr/bin/env bash
echo "python $*" >> "$STUB_CALLS"
if [ "$1" = "-c" ]; then exit "${{STUB_TORCH_MISSING:-0}}"; fi
echo "{NOISE}" >&2
case "$*" in *" -e "*) exit "${{STUB_FAIL_EDITABLE:-0}}";; esac
exit 0
"""
BASE_PYTHON = """#!/usr/bin/env bash
# `python3 -m venv .venv`: a venv whose python is the stub above
mkdir -p .venv/bin
cp "$STUB_VENV_PYTHON" .venv/bin/python
chmod +x .venv/bin/python
printf 'export PATH="%s/.venv/bin:$PATH"\\n' "$PWD" > .venv/bin/activate
"""


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _setup(tmp_path: Path, **env):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    calls = tmp_path / "calls.log"
    environ = {**os.environ, "PYTHON": str(_exe(tmp_path / "python3", BASE_PYTHON)),
               "STUB_VENV_PYTHON": str(_exe(tmp_path / "venv-python", VENV_PYTHON)),
               "STUB_CALLS": str(calls), **env}
    environ.pop("TUNEPLAN_TORCH_INDEX", None)
    out = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=environ, capture_output=True, text=True,
                         timeout=60)
    return out, calls.read_text() if calls.exists() else "", repo


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_steps_are_announced_and_pip_noise_goes_to_the_log(tmp_path):
    out, calls, repo = _setup(tmp_path, STUB_TORCH_MISSING="1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(line.startswith("setup: ") for line in lines)
    assert any("creating .venv" in line for line in lines)
    assert any("installing torch 2.13.0" in line for line in lines)
    assert any("installing tuneplan" in line for line in lines)
    assert NOISE not in out.stdout + out.stderr
    assert NOISE in (repo / ".venv" / "setup.log").read_text()
    assert "torch==2.13.0" in calls and '-e .[train,dev,eval]' in calls


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_failing_step_shows_the_log_and_exits_1(tmp_path):
    out, _, _ = _setup(tmp_path, STUB_FAIL_EDITABLE="1")
    assert out.returncode == 1
    assert "setup: failed: installing tuneplan" in out.stderr and NOISE in out.stderr
    assert "torch is already installed" in out.stdout
