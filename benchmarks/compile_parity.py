"""Eager vs compiled training step on one full run: same config and seed, ``train.compile``
off and on. Writes benchmarks/results/compile_parity_<device>.json (or ``--results FILE``) with
both runs' accuracies, their differences and wall times.

This end-to-end comparison is a measurement, not a test: any change of floating-point rounding
(compiled kernels, another thread count) moves a small run's accuracies by points, more on a
2-class base step that is unstable. What compilation itself may change is tested in
tests/test_compile.py: the compiled step's losses, logits and gradients against the eager
step's on the same batches, within float32 rounding.

The default is the Fashion-MNIST sweep's Finetune+SIR run at m = 20 (20-epoch base step,
5-epoch increments, one thread), so its eager half can also be checked against the sweep's
recorded result. On a GPU pass ``--compiled reduce-overhead --set train.device=cuda``.

    python benchmarks/compile_parity.py [--config FILE] [--compiled default] [--set key=value ...] [--results FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sircil.config import load_config
from sircil.runfolder import atomic_write_json
from sircil.trainer import resolve_device, run_experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CONFIG = ROOT / "configs" / "fashion_mnist" / "finetune_sir_b2_4steps.yaml"
SWEEP_OVERRIDES = [
    "train.device=cpu", "train.threads=1", "train.epochs=5", "train.base_epochs=20",
    "train.milestones=[3,4]", "train.base_milestones=[14,18]", "memory.per_class=20", "memory.total=null",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--compiled", default="default", choices=["default", "reduce-overhead"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "compile_parity"))
    parser.add_argument("--results", default=None, metavar="FILE", help="default: benchmarks/results/compile_parity_<device>.json")
    args = parser.parse_args()
    overrides = SWEEP_OVERRIDES + args.set
    results = {}
    for mode in ("off", args.compiled):
        cfg = load_config(args.config, overrides + [f"train.compile={mode}"])
        start = time.perf_counter()
        metrics = run_experiment(cfg, Path(args.runs_dir) / f"{Path(args.config).stem}-{mode}", overwrite=True)
        results[mode] = {
            "wall_seconds": round(time.perf_counter() - start, 1),
            "average_incremental_accuracy": metrics["average_incremental_accuracy"],
            "last_accuracy": metrics["last_accuracy"],
            "per_step_accuracy": [r["accuracy"] for r in metrics["per_step"]],
            "train_images_per_second": [r["train_images_per_second"] for r in metrics["per_step"]],
        }
    eager, compiled = results["off"], results[args.compiled]
    device = resolve_device(load_config(args.config, overrides).train.device)
    out = {
        "config": args.config,
        "overrides": overrides,
        "config_hash": load_config(args.config, overrides).hash(),
        "device": str(device),
        "runs": results,
        "difference_compiled_minus_eager": {
            "average_incremental_accuracy": round(compiled["average_incremental_accuracy"] - eager["average_incremental_accuracy"], 3),
            "last_accuracy": round(compiled["last_accuracy"] - eager["last_accuracy"], 3),
            "per_step_accuracy": [round(c - e, 3) for c, e in zip(compiled["per_step_accuracy"], eager["per_step_accuracy"])],
        },
    }
    path = Path(args.results) if args.results else RESULTS / f"compile_parity_{device.type}.json"
    atomic_write_json(path, out)
    print(path)
    print(out["difference_compiled_minus_eager"])


if __name__ == "__main__":
    main()
