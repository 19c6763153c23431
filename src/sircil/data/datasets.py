"""Datasets as uint8 tensors: the whole split lives on the training device.

Each dataset registers a :class:`DatasetSpec` (shape, classes, normalization) and a
loader that reads the standard files from a root folder, verifies their checksums and
fails with a message naming the file, the problem and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Config, DataConfig, register_check, require


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
    from ..config import ConfigError

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


def md5sum(path: Path, decompress: bool = False) -> str:
    digest = hashlib.md5()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, md5: str, spec: DatasetSpec, decompress: bool = False) -> None:
    if not path.is_file():
        raise DatasetError(f"{spec.name}: missing file {path}. {spec.where_to_get}")
    try:
        actual = md5sum(path, decompress)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{spec.name}: cannot read {path} ({exc}); the file is corrupt. {spec.where_to_get}") from None
    if actual != md5:
        raise DatasetError(
            f"{spec.name}: checksum mismatch for {path} (md5 {actual}, expected {md5}); the file is corrupt or "
            f"not the official release. Delete it and get it again. {spec.where_to_get}"
        )


# --- CIFAR-100 -----------------------------------------------------------------------

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
CIFAR100 = DatasetSpec(
    name="cifar100",
    num_classes=100,
    channels=3,
    image_size=32,
    mean=(0.5071, 0.4866, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    flip=True,
    default_roots=(),
    where_to_get=(
        "Put the standard 'cifar-100-python' folder (files train, test, meta from "
        f"{CIFAR100_URL}) under data.root or $SIRCIL_DATA, or set data.download=true on a machine with internet."
    ),
)


def _cifar_folder(root: Path) -> Path:
    return root if root.name == "cifar-100-python" else root / "cifar-100-python"


def _unpickle(path: Path, spec: DatasetSpec) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as exc:  # any unpickling failure means a damaged file
        raise DatasetError(f"{spec.name}: cannot unpickle {path} ({exc}). {spec.where_to_get}") from None


@register_dataset(CIFAR100)
def _load_cifar100(root: Path, cfg: DataConfig):
    md5 = CIFAR100_MD5
    folder = _cifar_folder(root)
    if cfg.download and not all((folder / f).is_file() for f in md5):
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR100_URL, str(folder.parent), md5=CIFAR100_ARCHIVE_MD5)
    for fname, digest in md5.items():
        _verify(folder / fname, digest, CIFAR100)
    splits = []
    for fname in ("train", "test"):
        entry = _unpickle(folder / fname, CIFAR100)
        if "data" not in entry or "fine_labels" not in entry:
            raise DatasetError(f"cifar100: {folder / fname} lacks 'data' or 'fine_labels'. {CIFAR100.where_to_get}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"cifar100: {folder / fname} holds data of shape {data.shape}, expected N x 3072. {CIFAR100.where_to_get}"
            )
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        labels = torch.as_tensor(entry["fine_labels"], dtype=torch.int64)
        splits.append(ImageSplit(images, labels))
    meta = _unpickle(folder / "meta", CIFAR100)
    names = list(meta.get("fine_label_names", [str(i) for i in range(100)]))
    return splits[0], splits[1], names


# --- Fashion-MNIST -----------------------------------------------------------------------

# Digests of the decompressed IDX files: distributions recompress the .gz files
# (Debian's differ from the upstream ones byte for byte), the content does not change.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    num_classes=10,
    channels=1,
    image_size=28,
    mean=(0.2860,),
    std=(0.3530,),
    flip=True,
    default_roots=("/usr/share/datasets/fashion-mnist",),
    where_to_get=(
        "Install the Debian package 'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist puts the "
        "IDX files in /usr/share/datasets/fashion-mnist/) or put the four standard IDX files (.gz or not) "
        "under data.root or $SIRCIL_DATA."
    ),
)


def _idx_file(root: Path, base: str) -> tuple[Path, bool]:
    for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        if (folder / f"{base}.gz").is_file():
            return folder / f"{base}.gz", True
        if (folder / base).is_file():
            return folder / base, False
    return root / f"{base}.gz", True


def read_idx(path: Path, compressed: bool, spec: DatasetSpec) -> np.ndarray:
    """Parse an IDX file (magic, dims, big-endian sizes, then uint8 data)."""
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{spec.name}: {path} is not an IDX file of unsigned bytes. {spec.where_to_get}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        raise DatasetError(
            f"{spec.name}: {path} is truncated or padded ({len(raw) - header} data bytes for shape {dims}). "
            f"{spec.where_to_get}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@register_dataset(FASHION_MNIST)
def _load_fashion_mnist(root: Path, cfg: DataConfig):
    arrays = {}
    for base, digest in FASHION_MNIST_MD5.items():
        path, compressed = _idx_file(root, base)
        _verify(path, digest, FASHION_MNIST, decompress=compressed)
        arrays[base] = read_idx(path, compressed, FASHION_MNIST)
    splits = []
    for prefix in ("train", "t10k"):
        images = torch.from_numpy(arrays[f"{prefix}-images-idx3-ubyte"].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64))
        splits.append(ImageSplit(images, labels))
    return splits[0], splits[1], list(FASHION_MNIST_CLASSES)


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


from . import custom  # noqa: E402,F401  (registers the user-dataset kinds)
