# Sourced by run.sh and test.sh: makes .venv, installs sircil into it, and installs the
# real Fashion-MNIST (Debian package) where apt is available. Idempotent and quick when done.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIRCIL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.sircil-installed-$(cat "$ROOT/pyproject.toml" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test,slurm,wandb]"
    touch "$stamp"
fi

FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION" ] && [ -z "${SIRCIL_DATA:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing the real Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
export PATH="$VENV/bin:$PATH"
