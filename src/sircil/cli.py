"""Command line: ``sircil run | config | sweep | report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config


def default_out(config_path: str, config_hash: str) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{config_hash[:8]}"


def cmd_run(args: argparse.Namespace) -> int:
    from .trainer import run_experiment

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else default_out(args.config, cfg.hash())
    if cfg.cache_dir is None and not args.no_base_cache:
        cfg.cache_dir = str(out.resolve().parent / "base_cache")
    print(f"run folder: {out}", file=sys.stderr)
    run_experiment(cfg, out, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_shard, run_sweep

    out = Path(args.out) if args.out else Path("runs") / Path(args.sweep).stem
    print(f"sweep folder: {out}", file=sys.stderr)
    statuses = run_sweep(args.sweep, out, parse_shard(args.shard), args.set, overwrite=args.overwrite)
    for status in statuses:
        print(f"{status['run']}: {status['status']}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.folder, args.out, paper=args.paper)
    print(f"wrote {out / 'report.md'} and {out / 'figure.png'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sircil", description="Class-incremental learning with SIR.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment from a YAML config")
    run.add_argument("config", help="YAML file, e.g. configs/fashion_mnist/icarl_b2_4steps.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. memory.per_class=5 (repeatable)")
    run.add_argument("--out", help="run folder (default runs/<config name>-<config hash>)")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (a plain rerun does too)")
    run.add_argument("--overwrite", action="store_true", help="discard a finished or different run in --out")
    run.add_argument(
        "--no-base-cache", action="store_true",
        help="train the base step even if a run beside this one cached the same base step (default: share runs/base_cache)",
    )
    run.set_defaults(func=cmd_run)
    show = sub.add_parser("config", help="print the resolved config (after --set) without running")
    show.add_argument("config")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_config)
    sweep = sub.add_parser("sweep", help="run a grid of runs (methods x steps x memory x seeds) from a sweep file")
    sweep.add_argument("sweep", help="YAML sweep file, e.g. configs/sweeps/fashion_mnist.yaml")
    sweep.add_argument("--out", help="sweep folder (default runs/<sweep name>)")
    sweep.add_argument("--shard", default="0/1", help="run only shard i of n (every n-th run from the i-th), e.g. 0/4")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run (repeatable)")
    sweep.add_argument("--overwrite", action="store_true", help="rerun finished runs and replace runs made from another config")
    sweep.set_defaults(func=cmd_sweep)
    report = sub.add_parser("report", help="report.md and figure.png from a folder of runs (mean +- std over seeds)")
    report.add_argument("folder", help="a sweep folder, or any folder holding run folders")
    report.add_argument("--out", help="where to write report.md and figure.png (default: the folder)")
    report.add_argument("--paper", action="store_true", help="add the SIR paper's reported values as dashed reference lines")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data.datasets import DatasetError
    from .report import ReportError
    from .runfolder import RunFolderError
    from .trainer import TrainingError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, RunFolderError, TrainingError, ReportError) as exc:
        print(f"sircil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sircil: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
