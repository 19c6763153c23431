#!/usr/bin/env bash
# The test suite (CPU only, about 17 minutes on 2 cores): sets up .venv and the data, then runs pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/setup-env.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
