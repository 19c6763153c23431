"""Datasets as uint8 tensors: the whole split lives on the training device.

Each dataset registers a :class:`DatasetSpec` (shape, classes, normalization) and a
loader that reads its files from a root folder (readers.py: the standard datasets;
custom.py: a user's); loading checks the splits against the spec, and the config is
checked against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import Config, register_check
from ..config_io import require
from ..config_sections import DataConfig


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt or malformed; the message says what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...] | None  # None: measured on the training split
    std: tuple[float, ...] | None
    flip: bool
    default_roots: tuple[str, ...]
    where_to_get: str


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def to(self, device: torch.device | str) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class Dataset:
    spec: DatasetSpec
    train: ImageSplit
    test: ImageSplit
    class_names: list[str]


Loader = Callable[[Path, DataConfig], tuple[ImageSplit, ImageSplit, list[str]]]
# A user's dataset (a folder of images, a .npz file) has its class count and image shape
# read from its files, cheaply, before the config is validated.
Probe = Callable[[Path, DataConfig], DatasetSpec]
_SPECS: dict[str, DatasetSpec] = {}
_LOADERS: dict[str, Loader] = {}
_PROBES: dict[str, Probe] = {}


def register_dataset(spec: DatasetSpec, probe: Probe | None = None) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _SPECS[spec.name] = spec
        _LOADERS[spec.name] = fn
        if probe is not None:
            _PROBES[spec.name] = probe
        return fn

    return deco


def dataset_spec(name: str) -> DatasetSpec:
    from ..config_io import ConfigError

    if name not in _SPECS:
        raise ConfigError(f"data.dataset must be one of {sorted(_SPECS)}, got {name!r}")
    return _SPECS[name]


def dataset_names() -> list[str]:
    return sorted(_SPECS)


def resolve_root(cfg: DataConfig, spec: DatasetSpec) -> Path:
    """The config's root, else $SIRCIL_DATA, else the dataset's usual system folders."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    env = os.environ.get("SIRCIL_DATA")
    if env:
        return Path(env).expanduser()
    for candidate in spec.default_roots:
        if Path(candidate).is_dir():
            return Path(candidate)
    return Path("data")


def resolve_spec(cfg: DataConfig) -> DatasetSpec:
    """The dataset's spec; for a user's dataset, read from its files under the root."""
    spec = dataset_spec(cfg.dataset)
    probe = _PROBES.get(spec.name)
    return probe(resolve_root(cfg, spec), cfg) if probe is not None else spec


def load_dataset(cfg: DataConfig) -> Dataset:
    spec = resolve_spec(cfg)
    root = resolve_root(cfg, spec)
    train, test, names = _LOADERS[spec.name](root, cfg)
    for split_name, split in (("train", train), ("test", test)):
        _check_split(spec, split, split_name, root)
    train = first_per_class(train, cfg.train_per_class, spec.num_classes)
    test = first_per_class(test, cfg.test_per_class, spec.num_classes)
    return Dataset(spec=spec, train=train, test=test, class_names=names)


def first_per_class(split: ImageSplit, limit: int | None, num_classes: int) -> ImageSplit:
    """Keep the first ``limit`` samples of each class, in file order."""
    if limit is None:
        return split
    labels = split.labels
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, torch.arange(num_classes))
    rank = torch.arange(labels.numel()) - starts[sorted_labels]
    keep = torch.sort(order[rank < limit]).values
    return ImageSplit(split.images[keep], labels[keep])


def _check_split(spec: DatasetSpec, split: ImageSplit, name: str, root: Path) -> None:
    expected = (spec.channels, spec.image_size, spec.image_size)
    images, labels = split.images, split.labels
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise DatasetError(
            f"{spec.name} {name} images under {root} have shape {tuple(images.shape)} and dtype {images.dtype}; "
            f"expected N x {expected[0]} x {expected[1]} x {expected[2]} uint8. The files are not the standard ones: "
            f"{spec.where_to_get}"
        )
    if labels.numel() != images.shape[0]:
        raise DatasetError(
            f"{spec.name} {name} split under {root} has {images.shape[0]} images but {labels.numel()} labels; "
            f"the files are mismatched or truncated: {spec.where_to_get}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise DatasetError(
            f"{spec.name} {name} labels under {root} fall outside 0..{spec.num_classes - 1}; {spec.where_to_get}"
        )


@register_check
def check_against_dataset(cfg: Config) -> None:
    """The config against the dataset's spec (a user's dataset is probed for it): image size,
    channels, and that the scenario and the class order fit its classes."""
    from .scenario import NAMED_ORDERS

    d, s = cfg.data, cfg.scenario
    spec = resolve_spec(d)
    require(
        d.crop_size is None or 8 <= d.crop_size <= spec.image_size,
        f"data.crop_size must be between 8 and the image size {spec.image_size}, got {d.crop_size}",
    )
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        require(values is None or len(values) == spec.channels, f"{key} needs {spec.channels} value(s) for {spec.name}, got {values}")
    require(
        s.base_classes < spec.num_classes,
        f"scenario.base_classes={s.base_classes} leaves no class for increments: {spec.name} has {spec.num_classes} classes",
    )
    remaining = spec.num_classes - s.base_classes
    require(
        remaining % s.steps == 0,
        f"scenario.steps={s.steps} does not divide the {remaining} classes left after "
        f"scenario.base_classes={s.base_classes} on {spec.name} ({spec.num_classes} classes)",
    )
    if isinstance(d.class_order, list):
        require(
            sorted(d.class_order) == list(range(spec.num_classes)),
            f"data.class_order must be a permutation of 0..{spec.num_classes - 1} for {spec.name}",
        )
    elif isinstance(d.class_order, str):
        require(d.class_order in NAMED_ORDERS, f"data.class_order must be a list or one of {sorted(NAMED_ORDERS)}, got {d.class_order!r}")
        require(
            len(NAMED_ORDERS[d.class_order]) == spec.num_classes,
            f"data.class_order={d.class_order!r} has {len(NAMED_ORDERS[d.class_order])} classes, {spec.name} has {spec.num_classes}",
        )


from . import readers  # noqa: E402,F401  (registers CIFAR-100 and Fashion-MNIST)
from . import custom  # noqa: E402,F401  (registers the user-dataset kinds)
