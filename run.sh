#!/usr/bin/env bash
# The main job: PODNet against SIR_P (PODNet + SIR) on real Fashion-MNIST (B5 then 5 steps of 1
# class) at m = 1, sharing one base step, then their side-by-side table and figure (offline, CPU,
# about 6 minutes on 2 cores):
# runs/main/compare.md and compare.png. With arguments it is `sircil run`, e.g.
#   bash run.sh configs/cifar100/icarl_b50_5steps.yaml --set data.root=/data
set -euo pipefail
source "$(dirname "$0")/scripts/setup-env.sh"
cd "$ROOT"
if [ $# -gt 0 ]; then
    if [[ "$1" == --* ]]; then
        set -- configs/fashion_mnist/icarl_b2_4steps.yaml "$@"
    fi
    exec sircil run "$@"
fi
sircil sweep configs/sweeps/main_podnet_vs_sir_p.yaml --out runs/main --devices cpu --per-device 2
sircil compare runs/main/runs/PODNet_m1_seed1993 runs/main/runs/SIR_P_m1_seed1993 --out runs/main
