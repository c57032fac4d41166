#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs uv, the workspace, redis-server and chromium when missing,
# then ruff (lint and format), mypy strict over sources, tests, examples, benchmarks and docs tooling, the
# documentation site (mkdocs --strict: a broken link or reference fails), and pytest under coverage with a floor.
# Extra arguments go to pytest (say, tests/unit -k engine); the coverage floor then does not apply.
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
echo "== docs (mkdocs build --strict)"
# Not --quiet: mkdocs 1.6 then hides the warnings that --strict turns into a failure, and exits 0.
NO_MKDOCS_2_WARNING=1 uv run --frozen mkdocs build --strict --site-dir .tmp/site 2>&1 | { grep -v '^INFO' || true; }
echo "== pytest (with coverage)"
rm -rf .tmp/coverage
mkdir -p .tmp/coverage
# coverage rather than pytest-cov: see [tool.coverage.run] in pyproject.toml.
uv run --frozen coverage run -m pytest "$@"
uv run --frozen coverage combine --quiet
if [ "$#" -eq 0 ]; then
    uv run --frozen coverage report  # fails under the floor set in pyproject.toml
else
    # A focused run covers only part of the code: show the total, do not hold it to the floor.
    echo "coverage of this run: $(uv run --frozen coverage report --format=total --fail-under=0)%"
fi
