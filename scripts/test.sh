#!/usr/bin/env bash
# The whole test suite: setup (idempotent), lint, types, tests with coverage.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-run
.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check src tests bench examples
.venv/bin/mypy
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q \
	--cov=mafalda --cov-branch --cov-report=term --cov-fail-under="$(cat .ci/coverage-floor)" "$@"
