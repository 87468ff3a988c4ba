#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite offline (two workers). Fails if no test ran.
#   bash scripts/test.sh           the full suite, as CI runs it (.ci/run)
#   bash scripts/test.sh --fast    the fast loop: every test but those marked `slow` (real training
#                                  processes, tmux end-to-end, wheel builds); reuses .venv as it is
#                                  when it exists (run scripts/setup.sh after changing dependencies)
# Other arguments go to pytest (`bash scripts/test.sh --fast tests/planner -x`).
set -uo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
if [ "$fast" -eq 0 ] || [ ! -x .venv/bin/python ]; then
  bash scripts/setup.sh || exit 1
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# this checkout's code, also when .venv's editable install points at another checkout (a worktree)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
markers=()
if [ "$fast" -eq 1 ]; then
  markers=(-m "not slow")
fi
# Two worker processes (pytest-xdist) by default; TUNEPLAN_TEST_WORKERS=0 runs in this process.
python -m pytest -n "${TUNEPLAN_TEST_WORKERS:-2}" ${markers[@]+"${markers[@]}"} "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
