"""What a dataset is, and the registry its readers fill.

readers.py (the standard datasets) and custom.py (a user's) register into this module;
datasets.py loads both and looks datasets up here. This module imports neither, so no module
of ``data`` imports one that imports it back. Look datasets up through datasets.py, which
makes sure every reader has registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config_io import ConfigError
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
    if name not in _SPECS:
        raise ConfigError(f"data.dataset must be one of {sorted(_SPECS)}, got {name!r}")
    return _SPECS[name]


def dataset_names() -> list[str]:
    return sorted(_SPECS)


def dataset_loader(name: str) -> Loader:
    return _LOADERS[name]


def dataset_probe(name: str) -> Probe | None:
    """How a user's dataset is probed for its spec; None for a dataset whose spec is fixed."""
    return _PROBES.get(name)
