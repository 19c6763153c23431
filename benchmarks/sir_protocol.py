"""SIR on the CPU protocol: real Fashion-MNIST, B2 then 4 steps, ResNet-32.

finetune, iCaRL, PODNet and DER, each without and with SIR (PODNet + SIR = SIR_P, DER + SIR
= SIR_D), at m = 20, 5 and 1, plus the SIR ablation at m = 5 (FC, FC+CA, FC+IT, all) for
finetune and iCaRL, and SIR_D with SIR's FC on DER's auxiliary loss too at m = 5 and 1.
Every run of a method shares one trained base step (the base-step cache), so the runs
differ only in their increments.
Writes benchmarks/results/sir_protocol.{md,json}.

    python benchmarks/sir_protocol.py [--workers 2] [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sircil.config import load_config
from sircil.runfolder import atomic_write_json, atomic_write_text

from cpu_protocol import run_or_reuse

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FULL = {"sir.enabled": True, "sir.fc": 1.0, "sir.ca": 0.9, "sir.it": 0.5}
VARIANTS = {
    "none": {},
    "SIR (FC+CA+IT)": FULL,
    "FC": {**FULL, "sir.ca": 1.0, "sir.it": 0.0},
    "FC+CA": {**FULL, "sir.it": 0.0},
    "FC+IT": {**FULL, "sir.ca": 1.0},
    "SIR + FC on aux": {**FULL, "method.sir_aux": True},
}
SLUGS = {"none": "none", "SIR (FC+CA+IT)": "sir", "FC": "fc", "FC+CA": "fc_ca", "FC+IT": "fc_it", "SIR + FC on aux": "sir_aux"}
METHODS = ("finetune", "icarl", "podnet", "der")
ABLATED = ("finetune", "icarl")
# DER warms up for 10 of its 170 epochs; with the 5-epoch increments below, 1 warmup epoch.
METHOD_OVERRIDES = {"der": ["method.warmup_epochs=1"]}


def grid() -> list[tuple[str, int, str]]:
    runs = [(method, m, variant) for method in METHODS for m in (20, 5, 1) for variant in ("none", "SIR (FC+CA+IT)")]
    runs += [(method, 5, variant) for method in ABLATED for variant in ("FC", "FC+CA", "FC+IT")]
    runs += [("der", m, "SIR + FC on aux") for m in (5, 1)]
    return runs


def run_name(method: str, m: int, variant: str) -> str:
    return f"{method}_m{m}_{SLUGS[variant]}"


def execute(job: tuple[str, int, str, str, list[str], int]) -> dict:
    method, m, variant, runs_dir, extra, threads = job
    overrides = [f"memory.per_class={m}", "train.device=cpu", f"train.threads={threads}", f"cache_dir={runs_dir}/base_cache"]
    overrides += [*extra, *METHOD_OVERRIDES.get(method, [])]
    overrides += [f"{k}={v}" for k, v in VARIANTS[variant].items()]
    cfg = load_config(ROOT / "configs" / "fashion_mnist" / f"{method}_b2_4steps.yaml", overrides)
    return run_or_reuse(cfg, Path(runs_dir) / run_name(method, m, variant))


def summarize(method: str, m: int, variant: str, metrics: dict) -> dict:
    biases = [r["logit_bias_old_minus_new"] for r in metrics["per_step"][1:]]
    nme = metrics.get("nme", {})
    return {
        "method": method,
        "memory_per_class": m,
        "sir": variant,
        "average_incremental_accuracy": metrics["average_incremental_accuracy"],
        "last_accuracy": metrics["last_accuracy"],
        "nme_average_incremental_accuracy": nme.get("average_incremental_accuracy"),
        "nme_last_accuracy": nme.get("last_accuracy"),
        "mean_logit_bias_old_minus_new": sum(biases) / len(biases),
        "base_step_cached": metrics["base_step_cached"],
    }


def table(rows: list[dict]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        "| method | m | SIR | avg inc. acc | last acc | avg inc. acc (NME) | last (NME) | logit bias old-new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['memory_per_class']} | {r['sir']} | {fmt(r['average_incremental_accuracy'])} | "
            f"{fmt(r['last_accuracy'])} | {fmt(r['nme_average_incremental_accuracy'])} | {fmt(r['nme_last_accuracy'])} | "
            f"{r['mean_logit_bias_old_minus_new']:+.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_sir_protocol"))
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (each with 2 / workers CPU threads)")
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    args = parser.parse_args()
    threads = max(1, 2 // args.workers)
    jobs = [(method, m, variant, args.runs_dir, args.set, threads) for method, m, variant in grid()]
    # The first run of each method trains and caches its base step; the others then reuse it.
    firsts = [next(j for j in jobs if j[0] == method) for method in METHODS]
    rest = [j for j in jobs if j not in firsts]
    results: dict[tuple, dict] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for job, metrics in zip(firsts, pool.map(execute, firsts)):
            results[job[:3]] = metrics
        for job, metrics in zip(rest, pool.map(execute, rest)):
            results[job[:3]] = metrics
    rows = [summarize(*key, results[key]) for key in sorted(results, key=lambda k: (k[0], -k[1], list(VARIANTS).index(k[2])))]
    RESULTS.mkdir(parents=True, exist_ok=True)
    extra = load_config(ROOT / "configs" / "fashion_mnist" / "icarl_b2_4steps.yaml", args.set)
    result = {"rows": rows, "overrides": args.set, "epochs": extra.train.epochs, "sir_full": FULL}
    atomic_write_json(RESULTS / "sir_protocol.json", result)
    text = table(rows)
    atomic_write_text(RESULTS / "sir_protocol.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
