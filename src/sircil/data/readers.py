"""The standard datasets' readers: CIFAR-100 (python pickles) and Fashion-MNIST (IDX files).

Each reader verifies the official files' checksums first and fails with a message naming
the file, the problem and where to get the files.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ..config_sections import DataConfig
from .registry import DatasetError, DatasetSpec, ImageSplit, register_dataset


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
