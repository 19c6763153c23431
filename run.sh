#!/usr/bin/env bash
# The main job: a class-incremental iCaRL run on real Fashion-MNIST (offline, CPU, minutes).
# Any other config or override goes after it, e.g.
#   bash run.sh configs/cifar100/icarl_b50_5steps.yaml --set data.root=/data
set -euo pipefail
source "$(dirname "$0")/scripts/setup-env.sh"
cd "$ROOT"
if [ $# -eq 0 ] || [[ "$1" == --* ]]; then
    set -- configs/fashion_mnist/icarl_b2_4steps.yaml "$@"
fi
exec sircil run "$@"
