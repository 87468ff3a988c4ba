#!/usr/bin/env bash
# Create .venv and install tuneplan with its training extra and test tools.
# torch is installed FIRST and pinned, so pip never pulls a multi-GB CUDA build by accident:
#  - on this project's machines `pip install torch==2.13.0` takes the CPU build from local disk;
#  - on a laptop with no GPU elsewhere, set TUNEPLAN_TORCH_INDEX=https://download.pytorch.org/whl/cpu
#  - on a CUDA machine, leave it unset (PyPI's Linux wheel is the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install --quiet "torch==${TUNEPLAN_TORCH_VERSION:-2.13.0}" \
    ${TUNEPLAN_TORCH_INDEX:+--index-url "$TUNEPLAN_TORCH_INDEX"}
fi
python -m pip install --quiet -e ".[train,dev]"
