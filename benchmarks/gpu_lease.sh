#!/usr/bin/env bash
# What fits one short GPU lease (about 9 minutes of a 15-minute budget) of what
# docs/performance.md still lacks: the paper's B50 5-step PODNet recipe timed end to end on
# CIFAR-100-shaped generated images, then SIR_P from PODNet's cached base step, until a deadline;
# then, with what is left, K = 2 and K = 4 packed full-size benches. The throughput rows and the
# Fashion-MNIST grid are done (benchmarks/results/gpu, gpu_h100, fashion_mnist_gpu);
# `benchmarks/gpu.sh` is the whole measurement (about 25 minutes).
#   bash benchmarks/gpu_lease.sh <results folder>
# Writes into the results folder: gpu.txt, lease.log and b50_runs.tgz (config, metrics,
# metrics.jsonl, provenance and log of both runs, finished or not: they resume from their last
# step), packed_k*.json. DEADLINE (seconds from the start, default 540) bounds it all;
# SIRCIL_LEASE_DEVICE=cpu and SIRCIL_LEASE_SET="train.epochs=1 ..." try the plumbing on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=$(mkdir -p "$1" && cd "$1" && pwd)
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-540}
DEVICE=${SIRCIL_LEASE_DEVICE:-cuda}
START=$SECONDS
exec > >(tee -a "$RESULTS/lease.log") 2>&1
left() { echo $((DEADLINE - (SECONDS - START))); }

$PY -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH=$PWD/src
{ nvidia-smi 2>&1; $PY -c "import torch, sircil; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'sircil', sircil.__version__)"; } > "$RESULTS/gpu.txt"
cat "$RESULTS/gpu.txt"

DATA_DIR=/tmp/sircil-bench
DATA=$($PY -c "from pathlib import Path; from sircil.bench_data import synthetic_cifar100; print(synthetic_cifar100(Path('$DATA_DIR'), 50000))")
SET=(--set data.dataset=numpy --set "data.root=$DATA" --set "train.device=$DEVICE")
for extra in ${SIRCIL_LEASE_SET:-}; do SET+=(--set "$extra"); done
for recipe in podnet sir_p; do
  budget=$(( $(left) - 30 ))
  [ "$budget" -gt 20 ] || break
  echo "== $recipe B50 5 steps ($budget s)"
  timeout --signal=INT --kill-after=15 "$budget" $PY -m sircil run configs/cifar100/${recipe}_b50_5steps.yaml "${SET[@]}" \
    --out runs/lease_b50/$recipe
done
tar czf "$RESULTS/b50_runs.tgz" --exclude='*.pt' --exclude='*.png' --exclude=base_cache --exclude=checkpoints runs/lease_b50 2>/dev/null

for k in 2 4; do
  [ "$DEVICE" = cuda ] && [ "$(left)" -gt 100 ] || break
  echo "== $k benches packed ($(left) s left)"
  for i in $(seq 1 $k); do
    timeout 90 $PY -m sircil bench --set train.device=cuda --data-dir "$DATA_DIR" --out "$RESULTS/packed_k${k}_run$i.json" > /dev/null 2>&1 &
  done
  wait
done
ls -la "$RESULTS"
