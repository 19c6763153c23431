"""``sircil bench``: training throughput of sircil's data path against two references.

Three pipelines train the config's model (ResNet-32 for the default iCaRL CIFAR-100 recipe)
on generated CIFAR-100-shaped data (uint8 3 x 32 x 32, 100 balanced classes, cached as a
``.npz`` the ``numpy`` dataset reads), each in one ``Fitter.fit`` call on a step holding
every class (a 100-class head) and every training image. So all three run fit's own
training step, with its loss, optimizer, batch size, precision, memory format, compilation
and thread count, and differ only in where each batch comes from:

- ``sircil``: fit as a run calls it: uint8 data on the device, augmentation batched there.
- ``limit``: one fixed batch, augmented, normalized and on the device once, handed to fit
  over and over: the model's compute limit. fit's own bookkeeping per batch (shuffled index
  gather, running loss and accuracy sums) still runs, so this limit is a few small kernels
  per batch below a bare forward/backward/SGD loop.
- ``dataloader``: the anchors' pipeline (PyCIL, PODNet): a ``torch.utils.data.DataLoader``
  whose workers turn each image into a PIL image and apply torchvision's RandomCrop(32,
  padding=4), RandomHorizontalFlip, ToTensor and Normalize one sample at a time, each batch
  then copied to the device.

Every pipeline runs ``--epochs`` epochs (default 2) of the training set; the first is warmup
(compilation, allocator, cuDNN's choices, worker start-up) when there are more than one.
Each timed region starts and ends with the device synchronized. The issue's targets: sircil
within 10% of the limit and at least twice the dataloader. Results are printed and written
to JSON (default ``benchmarks/results/throughput_<device type>.json``).

    sircil bench [--set train.device=cuda] [--set train.precision=bf16] [--epochs 2] [--workers N]
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import torch
import torchvision

from .bench_data import CLASSES, DATA_SEED, dataloader_batches, synthetic_cifar100
from .config import load_config
from .config_io import ConfigError
from .data.augment import BatchAugment
from .runfolder import RunFolder, atomic_write_json, device_name, git_commit, setup_logger
from .trainer import Trainer
from .training.phase import Phase, Step

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "cifar100" / "icarl_b50_5steps.yaml"
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "sircil-bench"
RESULTS = REPO / "benchmarks" / "results"
TARGETS = {"sircil_to_limit": 0.9, "sircil_to_dataloader": 2.0}  # the issue's: within 10% of the limit, 2x the anchors


@dataclass(frozen=True)
class BenchOptions:
    """What ``sircil bench`` measures; None picks the default named in each field's comment."""

    config: str | None  # recipe of the model and its training; None: configs/cifar100/icarl_b50_5steps.yaml
    overrides: tuple[str, ...]  # --set key=value, applied to the config (data.dataset and data.root are the bench's)
    train_images: int  # size of the synthetic training set (its test set is a fifth of it)
    data_dir: str | None  # where the synthetic .npz is cached; None: <temp dir>/sircil-bench
    epochs: int  # epochs of each pipeline; the first is warmup when there are more than one
    workers: int | None  # DataLoader worker processes; None: os.cpu_count()
    out: str | None  # JSON file; None: benchmarks/results/throughput_<device type>.json


@dataclass(frozen=True)
class Measurement:
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


# --- the trainer, its step and the batch sources ------------------------------------------------


def build_trainer(config: Path, overrides: list[str], data: Path, folder: Path) -> Trainer:
    """A Trainer from the recipe, reading the synthetic data; its log goes to ``folder``."""
    cfg = load_config(config, [*overrides, "data.dataset=numpy", f"data.root={data}"])
    return Trainer(cfg, RunFolder(folder), setup_logger(folder / "log.txt", name="sircil.bench"))


def close_log(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)


def all_classes_step(trainer: Trainer) -> tuple[Step, torch.Tensor]:
    """A base step holding every class and every training image, prepared as ``run_step``
    prepares a step, so that the head has all 100 classes and an epoch is the whole training
    set, as in the anchors' pipeline (the recipe's own base step would hold half of both)."""
    step = Step(0, 0, trainer.parts.spec.num_classes)
    indices = torch.arange(len(trainer.train_split), device=trainer.device)
    trainer.prepare(step, indices)
    return step, indices


def make_phase(trainer: Trainer, step: Step, indices: torch.Tensor, name: str, epochs: int) -> Phase:
    """The base step's main phase as ``run_step`` builds it, for ``epochs`` epochs. Fresh
    parameter groups each time: the optimizer built from them keeps state in them."""
    return dataclasses.replace(trainer.main_phase(step, indices, name), epochs=epochs)


class BatchSource:
    """Stands in for ``trainer.fitter.augment`` during ``fit``: returns the pipeline's next batch and
    ignores the images fit gathered. So all three pipelines run fit's own training step, with
    whatever it does (autocast, compilation, CUDA graphs, fused optimizer), and differ only in
    where a batch comes from. Counts its calls, so that a fit which stops drawing its batches
    through ``fitter.augment`` is reported instead of silently timed."""

    def __init__(self, next_batch: Callable[[], torch.Tensor]):
        self.next_batch, self.calls = next_batch, 0

    def __call__(self, images: torch.Tensor, *augment_args: Any) -> torch.Tensor:
        self.calls += 1
        return self.next_batch()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_fit(trainer: Trainer, step: Step, indices: torch.Tensor, name: str, epochs: int, source: BatchSource | None = None) -> Measurement:
    """One ``Fitter.fit`` call of ``epochs`` epochs, batches from ``source`` (None: sircil's own
    on-device augmentation). Timed from the start of the second epoch (the first is warmup:
    compilation, allocator, cuDNN choices) to fit's return, device synchronized at both ends;
    all epochs when there is one. One call rather than a warmup call and a timed call,
    because fit compiles its step afresh for every phase."""
    warmup = 1 if epochs > 1 else 0
    phase = make_phase(trainer, step, indices, name, epochs)
    previous = phase.on_epoch_start
    marks: dict[str, float] = {}

    def on_epoch_start(epoch: int) -> None:
        if epoch == warmup:
            synchronize(trainer.device)
            marks["start"] = time.perf_counter()
        if previous is not None:
            previous(epoch)

    fitter = trainer.fitter
    augment = fitter.augment
    # a training-phase stand-in: fit calls its augment, and only a phase without augmentation reads more of it
    fitter.augment = cast(BatchAugment, source) if source is not None else augment
    try:
        images, _ = fitter.fit(dataclasses.replace(phase, on_epoch_start=on_epoch_start), step)
        synchronize(trainer.device)
    finally:
        fitter.augment = augment
    seconds = time.perf_counter() - marks["start"]
    if source is not None and source.calls * trainer.cfg.train.batch_size != images:
        raise RuntimeError(
            f"bench {name}: Fitter.fit trained on {images} images but drew {source.calls} batches through fitter.augment; "
            "fit no longer takes each batch from fitter.augment, and sircil/bench.py must follow it"
        )
    return Measurement(images * (epochs - warmup) // epochs, seconds)


@contextlib.contextmanager
def count_host_syncs(device: torch.device) -> Iterator[list | None]:
    """The synchronizing CUDA calls made inside the block (``torch.cuda.set_sync_debug_mode``
    warns on each); None on other devices."""
    if device.type != "cuda":
        yield None
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.cuda.set_sync_debug_mode("default")


def host_sync_sites(caught: list[warnings.WarningMessage]) -> dict[str, int]:
    """Where the synchronizing calls were made: ``file:line`` of each warning's source (below
    site-packages or the repository), with its count, most frequent first. Compilation's own
    reads show as torch/_dynamo or torch/_inductor lines, a training step's as sircil's."""
    sites: collections.Counter[str] = collections.Counter()
    for w in caught:
        if "synchroniz" in str(w.message):
            path = Path(w.filename).as_posix()
            for root in ("site-packages/", "/src/"):
                path = path.split(root, 1)[-1]
            sites[f"{path}:{w.lineno}"] += 1
    return dict(sites.most_common())


def fixed_batch(trainer: Trainer) -> BatchSource:
    """The limit: one batch, augmented and normalized once, already on the device in the
    model's memory format, handed out again and again."""
    generator = torch.Generator(device=trainer.device).manual_seed(DATA_SEED)
    x = trainer.fitter.augment(trainer.train_split.images[: trainer.cfg.train.batch_size], generator)
    if trainer.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return BatchSource(lambda: x)


# --- the benchmark -----------------------------------------------------------------------------


def check_options(options: BenchOptions) -> None:
    if options.train_images < CLASSES:
        raise ConfigError(f"--train-images must be at least {CLASSES} (one image per class), got {options.train_images}")
    if options.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {options.epochs}")
    if options.workers is not None and options.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0: load in the main process), got {options.workers}")


def run_bench(options: BenchOptions) -> tuple[dict[str, Any], Path]:
    """Measure the three pipelines; returns the result (as written) and the JSON file's path."""
    check_options(options)
    config = Path(options.config) if options.config else DEFAULT_CONFIG
    if not config.is_file():
        raise ConfigError(f"config {config} does not exist; pass --config with a recipe YAML (e.g. configs/cifar100/icarl_b50_5steps.yaml)")
    data = synthetic_cifar100(Path(options.data_dir) if options.data_dir else DEFAULT_DATA_DIR, options.train_images)
    workers = (os.cpu_count() or 1) if options.workers is None else options.workers
    with tempfile.TemporaryDirectory(prefix="sircil-bench-run-") as folder:
        trainer = build_trainer(config, list(options.overrides), data, Path(folder))
        try:
            batch = trainer.cfg.train.batch_size
            if batch > options.train_images:
                raise ConfigError(f"train.batch_size={batch} exceeds --train-images {options.train_images}")
            step, indices = all_classes_step(trainer)
            with count_host_syncs(trainer.device) as syncs:
                measured = {"sircil": time_fit(trainer, step, indices, "bench-sircil", options.epochs)}
            measured["limit"] = time_fit(trainer, step, indices, "bench-limit", options.epochs, fixed_batch(trainer))
            with dataloader_batches(data, batch, workers, trainer.device) as next_batch:
                measured["dataloader"] = time_fit(trainer, step, indices, "bench-dataloader", options.epochs, BatchSource(next_batch))
        finally:
            close_log(trainer.log)
    ips = {name: m.images_per_second for name, m in measured.items()}
    ratios = {"sircil_to_limit": ips["sircil"] / ips["limit"], "sircil_to_dataloader": ips["sircil"] / ips["dataloader"]}
    result = {
        "images_per_second": ips,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": {key: ratios[key] >= target for key, target in TARGETS.items()},
        "timed_images": {name: m.images for name, m in measured.items()},
        "timed_seconds": {name: m.seconds for name, m in measured.items()},
        "epochs": options.epochs,
        "warmup_epochs": 1 if options.epochs > 1 else 0,
        "batch_size": batch,
        "train_images": len(trainer.train_split),
        "classes": trainer.parts.spec.num_classes,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(trainer.device),
        "device_name": device_name(trainer.device),
        "precision": trainer.cfg.train.precision,
        "compile": trainer.compile_mode,
        # CUDA only: host synchronizations torch reported during sircil's epochs (compilation and
        # fit's one read of the epoch's sums included); None where the device has no such check
        "sircil_host_syncs": None if syncs is None else sum("synchroniz" in str(w.message) for w in syncs),
        "sircil_host_sync_sites": None if syncs is None else host_sync_sites(syncs),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "config": str(config),
        "overrides": list(options.overrides),
        "data": str(data),
        "command": sys.argv,
    }
    out = Path(options.out) if options.out else RESULTS / f"throughput_{trainer.device.type}.json"
    atomic_write_json(out, result)
    return result, out


def format_table(result: dict[str, Any]) -> str:
    ips, limit = result["images_per_second"], result["images_per_second"]["limit"]
    lines = [f"{'pipeline':<12}{'images/s':>12}{'vs limit':>10}"]
    lines += [f"{name:<12}{value:>12.1f}{value / limit:>10.2f}" for name, value in ips.items()]
    ratios, targets = result["ratios"], result["targets"]
    lines.append(
        f"sircil / limit {ratios['sircil_to_limit']:.2f} (target >= {targets['sircil_to_limit']}), "
        f"sircil / dataloader {ratios['sircil_to_dataloader']:.2f} (target >= {targets['sircil_to_dataloader']}); "
        f"batch {result['batch_size']}, {result['workers']} workers, {result['threads']} threads, {result['device_name']}"
    )
    return "\n".join(lines)
