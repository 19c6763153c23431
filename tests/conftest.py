"""Shared fixtures: the real Fashion-MNIST files, one trained run, and small datasets written in the
official formats.

The slow tier (``bash test.sh -m "not slow"`` leaves it out) is declared on each test that trains
a run end to end or starts processes: ``@pytest.mark.slow``, or ``pytestmark`` for a module of them."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sircil.config import config_from_dict
from sircil.data import readers
from sircil.training.context import StepContext
from sircil.training.phase import Step

FASHION_ROOT = Path(os.environ.get("SIRCIL_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A Trainer built directly sets the process's thread count; later tests must not inherit it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        message = f"real Fashion-MNIST not found in {FASHION_ROOT}: apt-get install dataset-fashion-mnist"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return FASHION_ROOT


def fashion_config(**sections) -> dict:
    """A tiny B2-4steps run on real Fashion-MNIST slices; sections override by key."""
    raw = {
        "seed": 7,
        "method": {"name": "finetune"},
        "data": {"dataset": "fashion_mnist", "root": str(FASHION_ROOT), "train_per_class": 200, "test_per_class": 100},
        "scenario": {"base_classes": 2, "steps": 4},
        "memory": {"per_class": 20},
        # one thread: on a shared 2-core machine a second one mostly waits for its turn
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.02, "device": "cpu", "scheduler": "cosine", "threads": 1},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def two_step_config(method: dict, **sections) -> dict:
    """The family's end-to-end run: B6 then 2 steps of 2 classes, 60 / 30 images per class, m = 5, 3 epochs."""
    return fashion_config(
        method=method, data={"train_per_class": 60, "test_per_class": 30}, scenario={"base_classes": 6, "steps": 2},
        memory={"per_class": 5}, train={"epochs": 3, "batch_size": 32, "threads": 1}, **sections,
    )


def make_config(raw: dict):
    return config_from_dict(raw)


def trained_run_config() -> dict:
    """The shared trained run: finetune with post-hoc logit adjustment (a plug-in that changes
    inference), B4 then 2 steps of 3 classes, 40 / 20 images per class, m = 5, 2 epochs."""
    return fashion_config(
        logit_adjustment={"enabled": True, "mode": "post_hoc"}, data={"train_per_class": 40, "test_per_class": 20},
        scenario={"base_classes": 4, "steps": 2}, memory={"per_class": 5}, train={"epochs": 2, "batch_size": 16},
    )


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    metrics: dict

    def config(self) -> dict:
        """The config it was trained from, a fresh copy to change at will."""
        return trained_run_config()


@pytest.fixture(scope="session")
def trained_run(fashion_root, tmp_path_factory) -> TrainedRun:
    """One finished run, trained once per session, for the tests that need some trained run but
    not a particular one (eval, export, predict, the rerun or resume of a finished config). They
    read its folder and never change what is there (``sircil eval`` adds its records under eval/)."""
    from sircil.trainer import run_experiment

    folder = tmp_path_factory.mktemp("trained_run") / "run"
    return TrainedRun(folder, run_experiment(make_config(trained_run_config()), folder))


def base_step_key(cfg) -> dict:
    """The method's part of the base-step cache key, as the trainer makes it."""
    from sircil.methods import METHODS

    return METHODS[cfg.method.name].base_step_key(cfg.method)


def step_context(step: Step, labels: torch.Tensor, **fields) -> StepContext:
    """A step context for a method or plug-in used alone: the step's training set is every label
    given; ``fields`` replace the defaults (e.g. ``fit=phases.append``, ``memory_indices=...``)."""

    def unexpected(*args):
        raise AssertionError("this test did not expect the method to call this")

    defaults = dict(
        step=step, seed=0, device=torch.device("cpu"), indices=torch.arange(len(labels)), labels=labels,
        class_steps=torch.zeros(step.num_seen, dtype=torch.long), class_names=[f"class{k}" for k in range(step.num_seen)],
        log=logging.getLogger("test"), is_main=False, folder=Path(tempfile.gettempdir()),
        memory_indices=unexpected, embed_indices=unexpected, fit=unexpected,
    )
    return StepContext(**{**defaults, **fields})


EPOCH_LOSS = re.compile(r"step (\d+) (\S+) epoch \d+/\d+: loss (\S+) ")


def epoch_losses(log: str) -> dict[tuple[int, str], list[float]]:
    """Each (step, phase)'s mean training loss per epoch, from a run's log."""
    losses: dict[tuple[int, str], list[float]] = {}
    for step, phase, loss in EPOCH_LOSS.findall(log):
        losses.setdefault((int(step), phase), []).append(float(loss))
    return losses


VOLATILE = {"wall_seconds", "train_images_per_second", "peak_memory_mb"}


def stable(metrics: dict) -> dict:
    """Metrics without the timing fields, which differ between identical runs."""
    out = {k: v for k, v in metrics.items() if k != "per_step"}
    out["per_step"] = [{k: v for k, v in r.items() if k not in VOLATILE} for r in metrics["per_step"]]
    return out


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def class_templates(num_classes: int, channels: int, size: int, seed: int) -> np.ndarray:
    """Distinct, smooth per-class images, so that a small network separates the classes quickly."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, size=(num_classes, channels, 4, 4))
    return np.kron(coarse, np.ones((1, 1, size // 4, size // 4))).astype(np.float64)


def noisy_samples(templates: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    labels = np.tile(np.arange(templates.shape[0]), per_class)
    images = templates[labels] + rng.normal(0, 20, size=(labels.size,) + templates.shape[1:])
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_cifar100(root: Path, monkeypatch, train_per_class: int = 6, test_per_class: int = 3, seed: int = 0) -> Path:
    """Write train/test/meta pickles in the exact cifar-100-python format and register their md5s."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    templates = class_templates(100, 3, 32, seed)
    for name, per_class, s in (("train", train_per_class, seed + 1), ("test", test_per_class, seed + 2)):
        images, labels = noisy_samples(templates, per_class, s)
        entry = {"data": images.reshape(len(labels), -1), "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i:02d}" for i in range(100)]}))
    for name in ("train", "test", "meta"):
        monkeypatch.setitem(readers.CIFAR100_MD5, name, md5_bytes((folder / name).read_bytes()))
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_idx(root: Path, monkeypatch, train_per_class: int = 5, test_per_class: int = 2, compress: bool = True) -> Path:
    """Write the four IDX files (optionally gzipped) and register their content md5s."""
    root.mkdir(parents=True, exist_ok=True)
    templates = class_templates(10, 1, 28, 3)
    for prefix, per_class, s in (("train", train_per_class, 4), ("t10k", test_per_class, 5)):
        images, labels = noisy_samples(templates, per_class, s)
        for kind, array in (("images-idx3-ubyte", images[:, 0]), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}"
            path = root / (name + (".gz" if compress else ""))
            path.write_bytes(gzip.compress(data) if compress else data)
            monkeypatch.setitem(readers.FASHION_MNIST_MD5, name, md5_bytes(data))
    return root
