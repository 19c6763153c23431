"""Command line: ``sircil run | config | sweep | report | compare | eval | predict | export | bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import load_config
from .config_io import ConfigError
from .runfolder import default_out


def cmd_run(args: argparse.Namespace) -> int:
    from .distributed import from_environment, resolve_device
    from .trainer import run_experiment

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else default_out(args.config, cfg.hash())
    if cfg.cache_dir is None and not args.no_base_cache:
        cfg.cache_dir = str(out.resolve().parent / "base_cache")
    dist = from_environment(cuda=resolve_device(cfg.train.device).type == "cuda")  # torchrun: one process per device
    if dist.is_main:
        print(f"run folder: {out}" + (f" ({dist.world} processes)" if dist.enabled else ""), file=sys.stderr)
    try:
        run_experiment(cfg, out, resume=args.resume, overwrite=args.overwrite, dist=dist)
    finally:
        if dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .packed_sweep import plan_devices, run_packed_sweep
    from .packed_worker import sweep_worker
    from .sweep import describe, parse_shard, run_sweep

    out = Path(args.out) if args.out else Path("runs") / Path(args.sweep).stem
    shard_spec = parse_shard(args.shard)
    if args.slurm:  # the shards as a Slurm job array, run there
        from .slurm import cmd_slurm_sweep

        return cmd_slurm_sweep(args, out)
    if args.worker is not None:  # one process of a packed sweep, started by the command below
        return sweep_worker(args.sweep, out, shard_spec, args.set, args.overwrite, args.worker_dir, args.worker, args.worker_threads)
    devices, default = plan_devices(args.sweep, out, shard_spec, args.set, args.devices)
    print(f"sweep folder: {out}", file=sys.stderr)
    if args.per_device * len(devices) == 1 and devices == default:  # as before packing: in this process
        statuses = run_sweep(args.sweep, out, shard_spec, args.set, overwrite=args.overwrite)
        for status in statuses:
            print(describe(status), file=sys.stderr)
        failed = [s for s in statuses if s["status"] == "failed"]
        if failed:
            print(f"{len(failed)} of {len(statuses)} runs failed (each traceback in the run folder's error.txt, or above); rerun the same command after fixing them", file=sys.stderr)
        return 1 if failed else 0
    workers = args.per_device * len(devices)
    where = "the CPU" if devices == ["cpu"] else "GPU " + ",".join(devices)
    print(f"{workers} worker process{'es' if workers > 1 else ''}, {args.per_device} per device on {where}", file=sys.stderr)
    result = run_packed_sweep(
        args.sweep, out, devices, args.per_device, shard_spec, args.set, overwrite=args.overwrite,
        on_status=lambda s: print(describe(s) + (f" (worker {s['worker']}, {s['device']})" if "worker" in s else ""), file=sys.stderr),
    )
    print(f"worker logs and reports: {result.session}", file=sys.stderr)
    for line in result.failed:
        print(f"sircil: {line}", file=sys.stderr)
    if result.unfinished:
        print(f"{len(result.unfinished)} of {len(result.statuses)} runs not finished; rerun the same command to resume them", file=sys.stderr)
    if result.interrupted:
        print("sircil: interrupted; rerun the same command to resume from the last checkpoints", file=sys.stderr)
        return 130
    return 1 if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.folder, args.out, paper=args.paper)
    print(f"wrote {out / 'report.md'} and {out / 'figure.png'}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import write_comparison

    out = write_comparison(args.runs, args.out or args.runs[0])
    print((out / "compare.md").read_text())
    print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, format_table, run_bench

    options = BenchOptions(
        config=args.config, overrides=tuple(args.set), train_images=args.train_images, data_dir=args.data_dir,
        epochs=args.epochs, workers=args.workers, out=args.out,
    )
    result, out = run_bench(options)
    print(format_table(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .inference import evaluate_run
    from .runfolder import atomic_write_json

    record = evaluate_run(args.run, args.step, args.set, args.device)
    name = f"step_{record['step']:03d}" + ("_" + "_".join(o.split("=")[0] for o in args.set) if args.set else "") + ".json"
    out = Path(args.out) if args.out else Path(args.run) / "eval" / name
    atomic_write_json(out, {**record, "overrides": list(args.set)})
    print(json.dumps(record, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import load_run

    model = load_run(args.model, args.step, args.device)
    for path, ranked in zip(args.images, model.predict_files(args.images, args.top)):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import export_run

    print(f"wrote {export_run(args.run, args.out, args.step, args.device)}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sircil", description="Class-incremental learning with SIR.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_result_commands(sub)
    return parser


def _add_training_commands(sub: Any) -> None:
    """run, config, sweep, bench."""
    from .slurm import add_arguments as add_slurm_arguments

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
    sweep.add_argument(
        "--devices", metavar="LIST",
        help="CUDA device indices to run on, e.g. 0,1, or cpu (default: every visible GPU; the CPU without CUDA "
        "or when every run's config sets train.device=cpu)",
    )
    sweep.add_argument(
        "--per-device", type=int, default=1, metavar="K",
        help="worker processes per device (default 1). With more than one worker in all, each runs in its own "
        "process (CUDA_VISIBLE_DEVICES set to its GPU; on cpu train.threads capped at cores/workers) and takes "
        "the next run that is neither finished nor taken; logs in <out>/workers/. Small models pack well: four "
        "ResNet-32 runs on one H100 reach 3.7x one run's throughput",
    )
    add_slurm_arguments(sweep)
    sweep.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: one worker of a packed sweep
    sweep.add_argument("--worker-dir", help=argparse.SUPPRESS)
    sweep.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    sweep.set_defaults(func=cmd_sweep)
    bench = sub.add_parser(
        "bench", help="training images/s of sircil's on-device data path vs. the compute limit and a PIL DataLoader",
    )
    bench.add_argument("--config", help="recipe of the model and its training (default configs/cifar100/icarl_b50_5steps.yaml)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.precision=bf16 (repeatable)")
    bench.add_argument("--train-images", type=int, default=50_000, help="size of the synthetic CIFAR-100-shaped training set (default %(default)s)")
    bench.add_argument("--data-dir", help="where the synthetic data is cached (default <temp dir>/sircil-bench)")
    bench.add_argument("--epochs", type=int, default=2, help="epochs of the training set per pipeline (default %(default)s); the first is warmup when > 1")
    bench.add_argument("--workers", type=int, help="DataLoader worker processes (default the number of CPU cores)")
    bench.add_argument("--out", help="JSON file (default benchmarks/results/throughput_<device type>.json)")
    bench.set_defaults(func=cmd_bench)


def _add_result_commands(sub: Any) -> None:
    """report, compare, eval, predict, export: what reads finished runs."""
    report = sub.add_parser("report", help="report.md and figure.png from folders of runs (mean +- std over seeds)")
    report.add_argument("folder", nargs="+", help="sweep folders, or any folders holding run folders (a seed found twice counts once: the first folder's)")
    report.add_argument("--out", help="where to write report.md and figure.png (default: the first folder)")
    report.add_argument("--paper", action="store_true", help="add the SIR paper's reported values as dashed reference lines")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="runs side by side, step by step: accuracy, old/new accuracy, logit bias (table and figure)")
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--out", help="where to write compare.md and compare.png (default: the first run folder)")
    compare.set_defaults(func=cmd_compare)
    evaluate = sub.add_parser("eval", help="evaluate a run's checkpoint (CNN, and NME where the method has it) on its test set or other data")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--step", type=int, help="the step whose checkpoint to evaluate (default: the last)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.root=/other/copy (repeatable)")
    evaluate.add_argument("--device", help="e.g. cpu or cuda (default: the run's train.device)")
    evaluate.add_argument("--out", help="JSON file (default <run>/eval/step_NNN.json)")
    evaluate.set_defaults(func=cmd_eval)
    predict = sub.add_parser("predict", help="class names and probabilities for image files")
    predict.add_argument("model", help="run folder or a file written by sircil export")
    predict.add_argument("images", nargs="+", help="PNG or JPEG files, any size, grey or colour")
    predict.add_argument("--top", type=int, default=3, help="classes listed per image (default %(default)s)")
    predict.add_argument("--step", type=int, help="for a run folder: the step's model (default: the last)")
    predict.add_argument("--device", default="cpu", help="default %(default)s")
    predict.set_defaults(func=cmd_predict)
    export = sub.add_parser("export", help="one self-contained model file for sircil predict and sircil.load_run")
    export.add_argument("run", help="run folder")
    export.add_argument("--out", required=True, help="file to write, e.g. model.pt")
    export.add_argument("--step", type=int, help="the step's model (default: the last)")
    export.add_argument("--device", help="where to compute the exemplar means (default: the run's train.device)")
    export.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data.datasets import DatasetError
    from .report import ReportError
    from .runfolder import DISK_FULL, RunFolderError
    from .training.loop import TrainingError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, RunFolderError, TrainingError, ReportError) as exc:
        print(f"sircil: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk under a write of no run-folder file (log, TensorBoard): the same advice
        if exc.errno not in DISK_FULL:
            raise
        print(f"sircil: error: {exc}; free space on that disk and rerun the same command (a run resumes from its last checkpoint)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sircil: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
