#!/usr/bin/env bash
# The static checks CI runs after the tests: layer contracts, lint, types (settings in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "lint: import layers (lint-imports)"
lint-imports
echo "lint: ruff"
ruff check planner tuneplan verification tests bench scripts
echo "lint: mypy (planner/, its calibration and tuneplan/)"
mypy
