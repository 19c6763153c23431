#!/usr/bin/env bash
# The test suite (CPU only; on 2 cores about 9 minutes with set-up; `bash test.sh -m "not slow"`
# about half a minute, ruff and mypy included, mypy's first run a minute more): sets up .venv and the
# data, then runs pytest with one xdist worker per core, each test file on one worker.
set -euo pipefail
source "$(dirname "$0")/scripts/setup-env.sh"
cd "$ROOT"
exec python -m pytest -q -n auto --dist loadfile "$@"
