#!/usr/bin/env bash
# Runs the example order service end to end on a fresh machine: installs uv and the workspace when missing,
# then places one order that completes and one whose charge fails, and prints what happened.
# Extra arguments go to examples/quickstart.py (for instance --serve to keep serving for curl).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
setup_uv_workspace
uv run --frozen python examples/quickstart.py "$@"
