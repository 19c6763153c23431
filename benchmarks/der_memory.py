"""Host memory and time of one DER training iteration at the end of CIFAR-100 B50, 10 steps.

Builds the model of configs/cifar100/der_b50_10steps.yaml as it stands at the last step
(11 ResNet-18 extractors, 100 classes, the auxiliary head), then runs full training
iterations (forward through every extractor, DER's losses, backward, SGD) on a batch of 128
CIFAR-shaped images on the CPU, and records the process's peak resident memory.
Writes benchmarks/results/der_memory.json.

    python benchmarks/der_memory.py [--iterations 2] [--config configs/cifar100/der_b50_10steps.yaml]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from sircil.config import load_config
from sircil.data.datasets import dataset_spec
from sircil.data.scenario import Scenario
from sircil.methods import Step, method_class
from sircil.runfolder import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "cifar100" / "der_b50_10steps.yaml"))
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config, ["train.device=cpu"])
    spec = dataset_spec(cfg.data.dataset)
    scenario = Scenario.from_config(cfg.scenario, spec.num_classes)
    torch.manual_seed(0)
    der = method_class(cfg.method.name)(cfg, spec)
    for t in range(scenario.num_steps):
        step = Step(t, scenario.start(t), scenario.end(t))
        der.expand(step)
    model = der.model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(der.param_groups(step)[0]["params"], lr=0.1, momentum=0.9, weight_decay=5e-4)
    b = cfg.train.batch_size
    x = torch.randn(b, spec.channels, spec.image_size, spec.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, step.end, (b,))
    after_build = peak_rss_mb()
    seconds = []
    model.train()
    for _ in range(args.iterations):
        start = time.perf_counter()
        terms = der.losses(der.forward(x, step), y, step)
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(terms.values())).sum().backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    result = {
        "config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
        "extractors": len(model.extractors),
        "classes": step.end,
        "batch_size": b,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_rss_mb_after_build": round(after_build, 1),
        "peak_rss_mb_training": round(peak_rss_mb(), 1),
        "seconds_per_iteration": [round(s, 2) for s in seconds],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    out = ROOT / "benchmarks" / "results" / "der_memory.json"
    atomic_write_json(out, result)
    print(result)


if __name__ == "__main__":
    main()
