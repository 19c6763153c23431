"""Datasets as uint8 tensors, on the device a run uses (:class:`DeviceSplit`): training holds
a whole split there; evaluating a checkpoint moves only the images it reads.

Each dataset registers a :class:`DatasetSpec` (shape, classes, normalization) and a
loader that reads its files from a root folder (readers.py: the standard datasets;
custom.py: a user's) in registry.py; loading checks the splits against the spec, and the
config is checked against it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import Config, register_check
from ..config_io import require
from ..config_sections import DataConfig
from . import custom, readers  # noqa: F401  (they register the user-dataset kinds, CIFAR-100 and Fashion-MNIST)
from .registry import Dataset, DatasetError, DatasetSpec, ImageSplit, dataset_loader, dataset_probe, dataset_spec
from .scenario import NAMED_ORDERS


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
    probe = dataset_probe(spec.name)
    return probe(resolve_root(cfg, spec), cfg) if probe is not None else spec


def load_dataset(cfg: DataConfig) -> Dataset:
    spec = resolve_spec(cfg)
    root = resolve_root(cfg, spec)
    train, test, names = dataset_loader(spec.name)(root, cfg)
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


class DeviceSplit:
    """A split as a run reads it on its device. The labels are there from the start (small);
    the images move whole the first time :meth:`whole` or ``images`` asks (training, and the
    test pass of an evaluation), and until then :meth:`take` moves only the images it is asked
    for (a checkpoint's exemplars, the images a plug-in measures), so evaluating a checkpoint
    never holds the training split on the device."""

    def __init__(self, host: ImageSplit, device: torch.device):
        self.host, self.device = host, device
        self.labels = host.labels.to(device)
        self._images: torch.Tensor | None = None

    @property
    def moved(self) -> bool:
        """Whether the images are on the device, whole."""
        return self._images is not None

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = self.host.images.to(self.device)
        return self._images

    def whole(self) -> ImageSplit:
        return ImageSplit(self.images, self.labels)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices`` (on the device), without moving the others there."""
        if self._images is not None:
            return self._images[indices]
        return self.host.images[indices.cpu()].to(self.device)

    def __len__(self) -> int:
        return int(self.labels.numel())


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
