#!/usr/bin/env bash
# What fits one short GPU lease (about 9 minutes of a 15-minute budget): the throughput table's
# eager and reduce-overhead rows, then the Fashion-MNIST grid's missing runs (DDE, WA's variants),
# packed on the GPU, until a deadline. `benchmarks/gpu.sh` is the whole measurement (about 25 minutes).
#   bash benchmarks/gpu_lease.sh <results folder>   # Fashion-MNIST IDX files in .data/fashion-mnist
# Writes into the results folder: gpu.txt, throughput_{off,reduce-overhead}.json, lease.log and
# grid_runs.tgz (config, metrics, provenance and log of every finished run, and the workers' logs).
# DEADLINE (seconds from the start, default 540) bounds the grid; SIRCIL_LEASE_DEVICE=cpu and
# SIRCIL_LEASE_SET="train.epochs=1 ..." try the plumbing on a CPU; SIRCIL_LEASE_BENCH=0 skips the
# throughput runs.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=$(mkdir -p "$1" && cd "$1" && pwd)
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-540}
DEVICE=${SIRCIL_LEASE_DEVICE:-cuda}
WORKERS=${SIRCIL_LEASE_WORKERS:-8}
START=$SECONDS
exec > >(tee -a "$RESULTS/lease.log") 2>&1
left() { echo $((DEADLINE - (SECONDS - START))); }

$PY -m pip install -q --no-deps --no-build-isolation -e . || export PYTHONPATH=$PWD/src
{ nvidia-smi 2>&1; $PY -c "import torch, sircil; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'sircil', sircil.__version__)"; } > "$RESULTS/gpu.txt"
cat "$RESULTS/gpu.txt"

if [ "$DEVICE" = cuda ] && [ "${SIRCIL_LEASE_BENCH:-1}" = 1 ]; then
  for mode in off reduce-overhead; do
    echo "== bench $mode ($(left) s left)"
    timeout $([ $mode = off ] && echo 100 || echo 170) $PY -m sircil bench --set train.device=cuda --set train.compile=$mode --train-images 20000 \
      --data-dir /tmp/sircil-bench --out "$RESULTS/throughput_$mode.json"
  done
fi

DATA=$PWD/.data/fashion-mnist
COMMON="  - train.device=$DEVICE
  - train.threads=$(( $(nproc) / WORKERS > 0 ? $(nproc) / WORKERS : 1 ))
  - train.compile=off
  - data.root=$DATA"
for extra in ${SIRCIL_LEASE_SET:-}; do COMMON="$COMMON
  - $extra"; done
# What the Fashion-MNIST grid still lacks (the 2026-11-26 lease ran the rest): DDE, too slow for a
# CPU, and WA's two variants (no clipping; PyCIL's), three seeds; m = 1 last, as the CPU ran it.
cat > configs/sweeps/_lease_family.yaml <<EOF2
methods:
  DDE: ../fashion_mnist/dde_b2_4steps.yaml
  WA(no clipping): {config: ../fashion_mnist/wa_b2_4steps.yaml, overrides: [method.weight_clipping=false]}
  WA(PyCIL): {config: ../fashion_mnist/wa_b2_4steps.yaml, overrides: [method.weight_clipping=false, method.kd_weight=2]}
memory_per_class: [5, 20, 1]
seeds: [1993, 1994, 1995]
overrides:
$COMMON
EOF2
DEVICES=0; [ "$DEVICE" = cpu ] && DEVICES=cpu
budget=$(( $(left) - 25 ))
if [ "$budget" -gt 20 ]; then
  echo "== grid ($budget s)"
  timeout --signal=TERM --kill-after=15 "$budget" $PY -m sircil sweep configs/sweeps/_lease_family.yaml \
    --out runs/lease --devices $DEVICES --per-device "$WORKERS"
fi
rm -f configs/sweeps/_lease_family.yaml
echo "== finished runs: $(find runs/lease/runs -name metrics.json 2>/dev/null | wc -l) ($(left) s left)"
tar czf "$RESULTS/grid_runs.tgz" --exclude='*.pt' --exclude='*.png' --exclude=base_cache runs/lease 2>/dev/null
ls -la "$RESULTS"
