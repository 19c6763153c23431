#!/usr/bin/env bash
# Every GPU number of docs/performance.md in one command, on a machine with one CUDA GPU
# (about 25 minutes on an H100). Writes benchmarks/results/gpu/*.json and run folders under
# runs/gpu_bench/. Data: generated CIFAR-100-shaped images (sircil bench writes them once).
#   bash benchmarks/gpu.sh            # PYTHON=... to pick the interpreter (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results/gpu
mkdir -p "$OUT"
DATA_DIR=${SIRCIL_BENCH_DATA:-/tmp/sircil-bench}

# 1. one run: eager, compiled, CUDA graphs (three pipelines each: sircil, limit, DataLoader + PIL)
for mode in off default reduce-overhead; do
  $PY -m sircil bench --set train.device=cuda --set train.compile=$mode --data-dir "$DATA_DIR" --out "$OUT/throughput_$mode.json"
done
# 2. K runs packed on the GPU (the default mode): add up the K sircil throughputs
for k in 2 4; do
  for i in $(seq 1 $k); do
    $PY -m sircil bench --set train.device=cuda --data-dir "$DATA_DIR" --out "$OUT/packed_k${k}_run$i.json" &
  done
  wait
done
# 3. whole CIFAR-100-shaped B50 5-step runs (wall_seconds per step in each metrics.json)
DATA=$(ls "$DATA_DIR"/synthetic_cifar100_50000_*.npz | head -1)
for recipe in podnet sir_p; do
  $PY -m sircil run configs/cifar100/${recipe}_b50_5steps.yaml --set data.dataset=numpy --set "data.root=$DATA" \
    --out runs/gpu_bench/$recipe --overwrite --no-base-cache
done
# 4. eager vs compiled on one real-data run (Fashion-MNIST from .data/fashion-mnist when carried there)
if [ -d .data/fashion-mnist ]; then
  $PY benchmarks/compile_parity.py --compiled reduce-overhead --set train.device=cuda --set data.root=.data/fashion-mnist
fi
