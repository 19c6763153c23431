#!/usr/bin/env bash
# What fits one short GPU lease (about 9 minutes of a 15-minute budget): the throughput table's
# eager and reduce-overhead rows, then the Fashion-MNIST grid's missing runs, packed on the GPU,
# until a deadline. `benchmarks/gpu.sh` is the whole measurement (about 25 minutes).
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
# m = 1: the methods the CPU grid has not run (all three seeds, so each pair is on one device);
# then m = 5 and m = 20 for every method, base methods and their rectifications side by side.
# Finished runs (carried back as runs/lease) are skipped.
ALL="Finetune:finetune Finetune+SIR:finetune_sir Finetune+LA:finetune_la iCaRL:icarl iCaRL+SIR:icarl_sir
UCIR:ucir UCIR+SIR:ucir_sir PODNet:podnet SIR_P:sir_p WA:wa SS-IL:ssil DER:der SIR_D:sir_d"
sweep_file() {  # <file> <m> <label:config>...
  local file=$1 m=$2; shift 2
  { echo "methods:"
    for entry in "$@"; do echo "  ${entry%%:*}: ../fashion_mnist/${entry#*:}_b2_4steps.yaml"; done
    printf 'memory_per_class: [%s]\nseeds: [1993, 1994, 1995]\noverrides:\n%s\n' "$m" "$COMMON"; } > "$file"
}
sweep_file configs/sweeps/_lease_m1.yaml 1 DER:der SIR_D:sir_d WA:wa SS-IL:ssil
sweep_file configs/sweeps/_lease_m5.yaml 5 $ALL
sweep_file configs/sweeps/_lease_m20.yaml 20 $ALL
DEVICES=0; [ "$DEVICE" = cpu ] && DEVICES=cpu
for part in m1 m5 m20; do
  budget=$(( $(left) - 25 ))
  [ "$budget" -gt 20 ] || break
  echo "== grid $part ($budget s)"
  timeout --signal=TERM --kill-after=15 "$budget" $PY -m sircil sweep configs/sweeps/_lease_$part.yaml \
    --out runs/lease --devices $DEVICES --per-device "$WORKERS"
done
rm -f configs/sweeps/_lease_m*.yaml
echo "== finished runs: $(find runs/lease/runs -name metrics.json 2>/dev/null | wc -l) ($(left) s left)"
tar czf "$RESULTS/grid_runs.tgz" --exclude='*.pt' --exclude='*.png' --exclude=base_cache runs/lease 2>/dev/null
ls -la "$RESULTS"
