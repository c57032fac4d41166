#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs uv, the workspace, redis-server and chromium when missing,
# then ruff (lint and format), mypy strict over sources, tests, examples and benchmarks, and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
setup_uv_workspace
setup_redis_server
setup_chromium
echo "== ruff"
uv run --frozen ruff check .
uv run --frozen ruff format --check .
echo "== mypy (strict)"
uv run --frozen mypy
echo "== pytest"
uv run --frozen pytest "$@"
