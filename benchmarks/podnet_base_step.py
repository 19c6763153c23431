"""Train only the base step of a config and write its test accuracy, the learned scale over the
updates and the per-epoch losses to a JSON file (issue 23: why PODNet's base step underfit).

    python benchmarks/podnet_base_step.py configs/fashion_mnist/podnet_b2_4steps.yaml \
        --set data.flip=false --set seed=1994 --out benchmarks/results/podnet_base_step/pair_e20_s1994.json

Runs on the CPU with two threads unless --set says otherwise; nothing is cached or kept but the
JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from sircil.config import Config, load_config
from sircil.runfolder import RunFolder, atomic_write_json, setup_logger
from sircil.trainer import Trainer


@contextlib.contextmanager
def scratch_trainer(cfg: Config, level: int = logging.INFO) -> Iterator[Trainer]:
    """A trainer whose run folder is a temporary directory, gone with its log when the block ends."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = RunFolder(tmp)
        folder.prepare(cfg.to_yaml(), cfg.hash(), overwrite=True, require_existing=False)
        log = setup_logger(folder.path / "log.txt")
        log.setLevel(level)
        try:
            yield Trainer(cfg, folder, log)
        finally:
            for handler in list(log.handlers):
                handler.close()
                log.removeHandler(handler)


def train_base_step(config: str, overrides: list[str]) -> dict:
    cfg = load_config(config, ["train.threads=2", "train.compile=off", "train.device=cpu", *overrides])
    with scratch_trainer(cfg, logging.WARNING) as trainer:
        scales: list[float] = []

        def keep_scale(module: torch.nn.Module, args: tuple, out: dict) -> None:
            if module.training and "scale" in out:
                scales.append(float(out["scale"].detach()))

        trainer.method.model.register_forward_hook(keep_scale)
        start = time.perf_counter()
        step, ctx = trainer.begin_step(0)
        trainer.fitter.fit(trainer.main_phase(step, ctx.indices, "train"), step)
        trainer.update_memory(step)
        record, _, _ = trainer.parts.evaluator.evaluate(step, trainer.parts.task_bounds(step), ctx.memory_indices(), [])
        epochs = [json.loads(line) for line in (trainer.folder.path / "metrics.jsonl").read_text().splitlines()]
    every = max(1, len(scales) // 20)
    return {
        "config": config, "overrides": overrides, "accuracy": record["accuracy"],
        "scale_every_update": scales[::every], "final_scale": scales[-1] if scales else None,
        "updates": len(scales), "seconds": round(time.perf_counter() - start, 1),
        "epoch_loss": [round(e["loss"], 4) for e in epochs if "loss" in e],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = train_base_step(args.config, args.overrides)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("accuracy", "final_scale", "updates", "seconds")}))


if __name__ == "__main__":
    main()
