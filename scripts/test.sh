#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite offline (two workers). Fails if no test ran.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Two worker processes (pytest-xdist) by default; TUNEPLAN_TEST_WORKERS=0 runs in this process.
python -m pytest -n "${TUNEPLAN_TEST_WORKERS:-2}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
