"""How SIR should act on each kind of classifier: a screen on the first increment at m = 1.

Issue 15: SIR hurt UCIR (scaled cosines, learned scale, frozen old weights) and iCaRL's CNN
classifier (independent sigmoids). This runs, for one seed, the base step (taken from the
grid's base cache when it is there) and the first increment of real Fashion-MNIST B2+4 at
m = 1 and the configs' own 20 epochs, for each variant of SIR on each kind of head, and
records the step-1 accuracy (all / old / new), the test-set logit bias old - new, and the
learned scale where the head has one. One increment and one seed is a screen, not evidence:
the variant it picks is then measured over the whole protocol and three seeds by the grid
(`configs/sweeps/fashion_mnist_full.yaml`).

    python benchmarks/sir_heads.py [--only ucir] [--seed 1993]

Writes benchmarks/results/sir_heads.{json,md} (each finished variant is kept, so an
interrupted screen continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from sircil.config import load_config
from sircil.runfolder import RunFolder, atomic_write_json, atomic_write_text
from sircil.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "configs" / "fashion_mnist"
SIR = ["sir.enabled=true"]
LOGIT_UNITS = SIR + ["sir.cosine_scale=null"]
VARIANTS = {
    "ucir": {
        "none": [],
        "SIR, FC in logit units": LOGIT_UNITS,
        "SIR, FC in cosine units (s_ref 16)": SIR + ["sir.cosine_scale=16"],
    },
    "podnet": {
        "none": [],
        "SIR, FC in logit units": LOGIT_UNITS,
        "SIR, FC in cosine units (s_ref 16)": SIR + ["sir.cosine_scale=16"],
        # does the balanced classifier finetuning undo what SIR did to the bias?
        "none, no classifier finetuning": ["method.finetune_epochs=0"],
        "SIR, FC in logit units, no classifier finetuning": LOGIT_UNITS + ["method.finetune_epochs=0"],
    },
    "icarl": {
        "none": [],
        "SIR, FC as logit offsets": SIR,
        "SIR, FC as sample weights": SIR + ["sir.sigmoid=weight"],
    },
}


def first_increment(config: Path, overrides: list[str], cache_dir: Path) -> dict:
    cfg = load_config(config, overrides + ["train.device=cpu", "train.threads=1", f"cache_dir={cache_dir}"])
    log = logging.getLogger(f"sir_heads.{config.stem}")
    log.handlers[:] = [logging.StreamHandler()]
    log.setLevel(logging.INFO)
    folder = RunFolder(tempfile.mkdtemp(prefix="sir_heads_"))
    folder.prepare(cfg.to_yaml(), cfg.hash(), overwrite=True, require_existing=False)
    trainer = Trainer(cfg, folder, log)
    start = time.perf_counter()
    trainer.run_step(0)
    trainer.run_step(1)
    record = {k: v for k, v in trainer.progress.records[1].items() if k in (
        "accuracy", "accuracy_old", "accuracy_new", "accuracy_nme", "logit_bias_old_minus_new", "logit_bias_old_minus_new_sir_view")}
    record["base_accuracy"] = trainer.progress.records[0]["accuracy"]
    scale = getattr(trainer.method.model, "scale", None)
    if scale is not None:
        record["scale"] = float(scale)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def markdown(results: dict) -> str:
    lines = [
        "# SIR on each kind of head: first increment, m = 1 (screen)",
        "",
        "Real Fashion-MNIST B2+4, step 1 (classes 2-3 new, one exemplar per old class), 20 epochs, "
        "seed as given; `python benchmarks/sir_heads.py`.",
        "",
        "| method | variant | seed | step-1 acc | old | new | NME | bias old-new | scale |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for key, r in sorted(results.items(), key=lambda item: item[0].split(" | ")[0]):  # stable: variants in run order
        method, variant, seed = key.split(" | ")
        lines.append(
            f"| {method} | {variant} | {seed} | {fmt(r['accuracy'])} | {fmt(r['accuracy_old'])} | {fmt(r['accuracy_new'])} | "
            f"{fmt(r.get('accuracy_nme'))} | {fmt(r.get('logit_bias_old_minus_new'))} | {fmt(r.get('scale'))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append", help="methods to screen (default: all)")
    parser.add_argument("--variant", action="append", help="only the variants whose name contains this (repeatable)")
    parser.add_argument("--seed", type=int, default=1993)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "fashion_mnist_full" / "base_cache")
    parser.add_argument("--results", type=Path, default=RESULTS / "sir_heads.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for method in args.only or sorted(VARIANTS):
        for variant, overrides in VARIANTS[method].items():
            results = json.loads(args.results.read_text()) if args.results.is_file() else {}
            key = f"{method} | {variant} | {args.seed}"
            if key in results or (args.variant and not any(v in variant for v in args.variant)):
                continue
            record = first_increment(CONFIGS / f"{method}_b2_4steps.yaml", overrides + ["memory.per_class=1", f"seed={args.seed}"], args.cache)
            results = json.loads(args.results.read_text()) if args.results.is_file() else {}  # another screen may have written
            results[key] = record
            atomic_write_json(args.results, results)
            atomic_write_text(args.results.with_suffix(".md"), markdown(results))
            print(key, record, flush=True)


if __name__ == "__main__":
    main()
