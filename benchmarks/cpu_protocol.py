"""CPU protocol on real Fashion-MNIST (B2, 4 steps, ResNet-32): finetune and iCaRL at m = 20 and m = 1.

Writes benchmarks/results/cpu_protocol.{md,json}: average incremental and last accuracy
per run, and the training throughput of the runs against the same model's pure
forward/backward throughput on a batch already in memory (the compute limit).

    python benchmarks/cpu_protocol.py [--runs-dir runs/bench] [--set train.epochs=5 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sircil.config import load_config
from sircil.data.datasets import dataset_spec
from sircil.methods import method_class
from sircil.runfolder import RunFolder, atomic_write_json, atomic_write_text
from sircil.trainer import run_experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GRID = [(method, m) for method in ("finetune", "icarl") for m in (20, 1)]


def run_or_reuse(cfg, out: Path) -> dict:
    """A finished run of this exact config is reused, an interrupted one resumed, anything else replaced."""
    folder = RunFolder(out)
    if folder.is_finished() and folder.recorded_hash() == cfg.hash():
        return json.loads(folder.metrics_file.read_text())
    return run_experiment(cfg, out, overwrite=folder.recorded_hash() not in (None, cfg.hash()))


def pure_step_throughput(config_path: Path, steps: int = 20, warmup: int = 3) -> float:
    """Images/s of forward + backward + SGD on one fixed, already-normalized batch: the compute limit."""
    cfg = load_config(config_path)
    spec = dataset_spec(cfg.data.dataset)
    method = method_class(cfg.method.name)(cfg, spec)
    model = method.model
    model.head.expand(spec.num_classes)
    model.train()
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    b = cfg.train.batch_size
    x = torch.randn(b, spec.channels, spec.image_size, spec.image_size).contiguous(memory_format=memory_format)
    y = torch.randint(0, spec.num_classes, (b,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * b / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_cpu_protocol"))
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    args = parser.parse_args()
    rows = []
    for method, m in GRID:
        config = ROOT / "configs" / "fashion_mnist" / f"{method}_b2_4steps.yaml"
        cfg = load_config(config, [f"memory.per_class={m}", "train.device=cpu", *args.set])
        metrics = run_or_reuse(cfg, Path(args.runs_dir) / f"{method}_m{m}")
        steps = metrics["per_step"]
        images = sum(r["train_images"] for r in steps)
        rows.append({
            "method": method,
            "memory_per_class": m,
            "average_incremental_accuracy": metrics["average_incremental_accuracy"],
            "last_accuracy": metrics["last_accuracy"],
            "nme_average_incremental_accuracy": metrics.get("nme", {}).get("average_incremental_accuracy"),
            "nme_last_accuracy": metrics.get("nme", {}).get("last_accuracy"),
            "forgetting": metrics["forgetting"],
            "train_images_per_second": sum(r["train_images_per_second"] * r["train_images"] for r in steps) / images,
            "run": str(out),
        })
    limit = pure_step_throughput(ROOT / "configs" / "fashion_mnist" / "icarl_b2_4steps.yaml")
    result = {"rows": rows, "pure_forward_backward_images_per_second": limit, "torch": torch.__version__, "threads": torch.get_num_threads()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "cpu_protocol.json", result)
    lines = [
        "| method | m | avg inc. acc (CNN) | last (CNN) | avg inc. acc (NME) | last (NME) | forgetting | train img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['memory_per_class']} | {fmt(r['average_incremental_accuracy'])} | {fmt(r['last_accuracy'])} | "
            f"{fmt(r['nme_average_incremental_accuracy'])} | {fmt(r['nme_last_accuracy'])} | {fmt(r['forgetting'])} | {r['train_images_per_second']:.0f} |"
        )
    lines.append("")
    lines.append(f"Pure forward/backward of the same ResNet-32 on a fixed in-memory batch of {load_config(ROOT / 'configs/fashion_mnist/icarl_b2_4steps.yaml').train.batch_size}: {limit:.0f} images/s ({torch.get_num_threads()} threads, torch {torch.__version__}).")
    atomic_write_text(RESULTS / "cpu_protocol.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
