#!/usr/bin/env bash
# Create .venv and install tuneplan with its training extra and test tools.
# torch is installed FIRST and pinned, so pip never pulls a multi-GB CUDA build by accident:
#  - on this project's machines `pip install torch==2.13.0` takes the CPU build from local disk;
#  - on a laptop with no GPU elsewhere, set TUNEPLAN_TORCH_INDEX=https://download.pytorch.org/whl/cpu
#  - on a CUDA machine, leave it unset (PyPI's Linux wheel is the CUDA build).
# Each step says what it does; pip's own output (build warnings included) goes to
# .venv/setup.log and is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { printf 'setup: %s\n' "$*"; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
LOG=.venv/setup.log
: >"$LOG"
step() {  # step "what it does" command...: quiet on success, the log's tail on failure
  local what=$1
  shift
  say "$what"
  if ! "$@" >>"$LOG" 2>&1; then
    say "failed: $what; the last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >>"$LOG" 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  step "installing torch ${TUNEPLAN_TORCH_VERSION:-2.13.0} (the largest package: a minute or more)" \
    python -m pip install --quiet "torch==${TUNEPLAN_TORCH_VERSION:-2.13.0}" \
    ${TUNEPLAN_TORCH_INDEX:+--index-url "$TUNEPLAN_TORCH_INDEX"}
else
  say "torch is already installed"
fi
step "installing tuneplan (editable) with its training, evaluation and test dependencies (about a minute)" \
  python -m pip install --quiet -e ".[train,dev,eval]"
say "done: activate with '. .venv/bin/activate', then run 'tuneplan --help' (pip's output: $LOG)"
