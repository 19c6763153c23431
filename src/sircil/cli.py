"""Command line: ``sircil run CONFIG.yaml [--set key=value ...] [--out DIR]``."""

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
    print(f"run folder: {out}", file=sys.stderr)
    run_experiment(cfg, out, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
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
    run.set_defaults(func=cmd_run)
    show = sub.add_parser("config", help="print the resolved config (after --set) without running")
    show.add_argument("config")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data.datasets import DatasetError
    from .runfolder import RunFolderError
    from .trainer import TrainingError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, RunFolderError, TrainingError) as exc:
        print(f"sircil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sircil: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
