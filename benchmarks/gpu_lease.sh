#!/usr/bin/env bash
# What fits one short GPU lease (about 9 minutes of a 15-minute budget), in the order issues 23
# and 24 ask: first the part of the paper-shaped Fashion-MNIST grid (B5 then 5 steps of 1 class,
# configs/sweeps/fashion_mnist_b5.yaml) that the CPU has not measured, packed 8 runs to the GPU,
# then the B2 grid's PODNet and SIR_P rows with the official PODNet recipe
# (configs/sweeps/fashion_mnist_b2_podnet.yaml), until GRID_DEADLINE; it resumes where a lease
# stopped (copy that lease's runs back to runs/<grid>). Then the paper's B50 5-step PODNet recipe
# timed end to end on CIFAR-100-shaped generated images and SIR_P from its cached base step, until
# DEADLINE; then, with what is left, one compiled bench that names where its host synchronizations
# come from (sync_sites.json), then K = 2 and K = 4 packed full-size benches.
#   bash benchmarks/gpu_lease.sh <results folder>        (carry .data/fashion-mnist: the IDX files)
# Writes into the results folder: gpu.txt, lease.log, fashion_mnist_b5_runs.tgz,
# fashion_mnist_b2_podnet_runs.tgz and b50_runs.tgz (config, metrics, metrics.jsonl, provenance
# and log of every run, finished or not: they resume from their last step), packed_k*.json.
# DEADLINE (seconds from the start, default 540) bounds it all; SIRCIL_LEASE_DEVICE=cpu and
# SIRCIL_LEASE_SET="train.epochs=1 ..." try the plumbing on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=$(mkdir -p "$1" && cd "$1" && pwd)
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-540}
DEVICE=${SIRCIL_LEASE_DEVICE:-cuda}
START=$SECONDS
exec > >(tee -a "$RESULTS/lease.log") 2>&1
left() { echo $((DEADLINE - (SECONDS - START))); }

# this checkout's sources, without installing: an editable install would re-point whichever
# environment runs the script (a CPU try from a scratch clone leaves it at a deleted folder);
# packed sweep workers put the same package root on their path
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi 2>&1; $PY -c "import torch, sircil; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'sircil', sircil.__version__)"; } > "$RESULTS/gpu.txt"
cat "$RESULTS/gpu.txt"

GRID_DEADLINE=${GRID_DEADLINE:-$((DEADLINE * 2 / 3))}
FASHION=${SIRCIL_FASHION:-.data/fashion-mnist}
GRID_SET=(--set "data.root=$FASHION" --set "train.device=$DEVICE" --set train.compile=off --set train.threads=2)
for extra in ${SIRCIL_LEASE_SET:-}; do GRID_SET+=(--set "$extra"); done
DEVICES=$([ "$DEVICE" = cuda ] && echo 0 || echo cpu)
# What the CPU has not measured (the runs not in the grid's archive), m = 20 first (the paper's
# drop from 20 to 1), then m = 1, then the rest: one sweep file per memory size. The B5 grid
# first, then the B2 grid's PODNet and SIR_P rows with the official PODNet recipe.
for grid in fashion_mnist_b5 fashion_mnist_b2_podnet; do
  parts=$(mktemp -d)
  for part in $($PY benchmarks/sweep_missing.py configs/sweeps/$grid.yaml \
                  benchmarks/results/$grid "$parts" --first-memory 20 1); do
    budget=$((GRID_DEADLINE - (SECONDS - START)))
    [ "$budget" -gt 20 ] || break
    echo "== $grid: $(basename "$part") ($budget s)"
    timeout --signal=INT --kill-after=30 "$budget" $PY -m sircil sweep "$part" \
      --devices "$DEVICES" --per-device 8 "${GRID_SET[@]}" --out runs/$grid
  done
  tar czf "$RESULTS/${grid}_runs.tgz" --exclude='*.pt' --exclude='*.png' --exclude=base_cache --exclude=checkpoints runs/$grid 2>/dev/null
done

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

if [ "$DEVICE" = cuda ] && [ "$(left)" -gt 60 ]; then
  echo "== where compiled runs synchronize ($(left) s left): sircil_host_sync_sites in sync_sites.json"
  timeout $(( $(left) - 10 )) $PY -m sircil bench --set train.device=cuda --set train.compile=reduce-overhead --epochs 3 \
    --data-dir "$DATA_DIR" --out "$RESULTS/sync_sites.json" > /dev/null 2>&1
fi

for k in 2 4; do
  [ "$DEVICE" = cuda ] && [ "$(left)" -gt 100 ] || break
  echo "== $k benches packed ($(left) s left)"
  for i in $(seq 1 $k); do
    timeout 90 $PY -m sircil bench --set train.device=cuda --data-dir "$DATA_DIR" --out "$RESULTS/packed_k${k}_run$i.json" > /dev/null 2>&1 &
  done
  wait
done
ls -la "$RESULTS"
