#!/usr/bin/env bash
# The test suite (CPU only; on 2 cores about 14 minutes with set-up, 18 without xdist;
# `bash test.sh -m "not slow"` about 1 minute, ruff and mypy included): sets up .venv and the
# data, then runs pytest with one xdist worker per core, each test file on one worker.
set -euo pipefail
source "$(dirname "$0")/scripts/setup-env.sh"
cd "$ROOT"
exec python -m pytest -q -n auto --dist loadfile "$@"
