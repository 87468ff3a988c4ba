#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run tuneplan's main job on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec tuneplan demo "$@"
