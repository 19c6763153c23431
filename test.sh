#!/usr/bin/env bash
# The test suite (CPU only, about 20 minutes on 2 cores with set-up; `bash test.sh -m "not slow"` about 1.5 minutes):
# sets up .venv and the data, then runs pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/setup-env.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
