"""A user's own data, named in the config: a folder of images or a pair of numpy arrays.

``data.dataset: imagefolder`` reads ``data.root/train/<class>/*`` and ``data.root/val/<class>/*``
(or ``test/``), the torchvision ImageFolder layout: classes are the folder names in sorted
order, images are decoded once (threads), resized on their shorter side and center-cropped to
``data.image_size``, and kept as uint8 tensors like every other dataset.

``data.dataset: imagenet_subset`` is an ImageNet folder restricted to one of the two
100-class subsets of the literature (``data.subset``, see imagenet_subsets.py).

``data.dataset: numpy`` reads ``data.root``, a ``.npz`` file with ``x_train``, ``y_train``,
``x_test``, ``y_test`` (uint8 images as N x H x W, N x H x W x C or N x C x H x W with
C = 1 or 3; integer labels 0..K-1) and optionally ``class_names``.

Both measure their normalization on the training split unless ``data.mean``/``data.std`` say.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config_sections import DataConfig
from .registry import DatasetError, DatasetSpec, ImageSplit, register_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TEST_FOLDERS = ("val", "test")

IMAGEFOLDER = DatasetSpec(
    name="imagefolder",
    num_classes=0,
    channels=3,
    image_size=0,
    mean=None,
    std=None,
    flip=True,
    default_roots=(),
    where_to_get=(
        "Point data.root at a folder holding train/<class>/<images> and val/<class>/<images> (or test/), "
        "the same class folders in both, and set data.image_size."
    ),
)
NUMPY = DatasetSpec(
    name="numpy",
    num_classes=0,
    channels=0,
    image_size=0,
    mean=None,
    std=None,
    flip=True,
    default_roots=(),
    where_to_get=(
        "Point data.root at a .npz file holding uint8 arrays x_train, x_test (N x H x W, N x H x W x C or "
        "N x C x H x W, square images, C = 1 or 3) and integer labels y_train, y_test in 0..K-1 "
        "(np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...))."
    ),
)


# --- image folders -----------------------------------------------------------------------


def _split_folders(root: Path) -> tuple[Path, Path]:
    train = root / "train"
    if not train.is_dir():
        raise DatasetError(f"imagefolder: {train} is not a folder. {IMAGEFOLDER.where_to_get}")
    for name in TEST_FOLDERS:
        if (root / name).is_dir():
            return train, root / name
    raise DatasetError(f"imagefolder: {root} has no val/ or test/ folder beside train/. {IMAGEFOLDER.where_to_get}")


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def required_image_size(cfg: DataConfig, example: str) -> int:
    """``data.image_size``, which image folders need: their images come in every size."""
    from ..config_io import ConfigError

    if cfg.image_size is None:
        raise ConfigError(f"data.dataset={cfg.dataset} needs data.image_size (the side images are resized and cropped to, {example})")
    return cfg.image_size


def probe_imagefolder(root: Path, cfg: DataConfig) -> DatasetSpec:
    size = required_image_size(cfg, "e.g. 32 or 224")
    train, _ = _split_folders(root)
    classes = _classes(train)
    if len(classes) < 2:
        raise DatasetError(f"imagefolder: {train} holds {len(classes)} class folder(s); class-incremental learning needs at least 2")
    return dataclasses.replace(IMAGEFOLDER, num_classes=len(classes), image_size=size)


def decode_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    """RGB (or grey for ``channels`` 1), shorter side resized to ``size`` (JPEGs decoded at reduced
    scale when they are much larger), center crop ``size`` x ``size``, as a uint8 C x H x W tensor."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image.draft(mode, (size, size))
            image = image.convert(mode)
            w, h = image.size
            scale = size / min(w, h)
            image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=3.0)
            w, h = image.size
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot decode the image {path} ({exc}); give a PNG or JPEG file") from None
    return torch.from_numpy(array.copy()).reshape(size, size, channels).permute(2, 0, 1)


def _read_split(folder: Path, classes: list[str], size: int, limit: int | None) -> ImageSplit:
    files, labels = [], []
    for k, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DatasetError(f"imagefolder: class {name!r} of train/ has no folder in {folder}; both splits need the same classes")
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise DatasetError(f"imagefolder: class folder {class_dir} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
        images = images[:limit] if limit is not None else images
        files += images
        labels += [k] * len(images)
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(lambda p: decode_image(p, size), files))
    return ImageSplit(torch.stack(decoded), torch.tensor(labels, dtype=torch.int64))


@register_dataset(IMAGEFOLDER, probe=probe_imagefolder)
def _load_imagefolder(root: Path, cfg: DataConfig):
    train_dir, test_dir = _split_folders(root)
    classes = _classes(train_dir)
    extra = sorted(set(_classes(test_dir)) - set(classes))
    if extra:
        raise DatasetError(f"imagefolder: {test_dir} has class folders absent from {train_dir}: {extra}")
    size = required_image_size(cfg, "e.g. 32 or 224")
    train = _read_split(train_dir, classes, size, cfg.train_per_class)
    test = _read_split(test_dir, classes, size, cfg.test_per_class)
    return train, test, classes


# --- ImageNet-Subset ---------------------------------------------------------------------

IMAGENET_SUBSET = DatasetSpec(
    name="imagenet_subset",
    num_classes=100,
    channels=3,
    image_size=0,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    flip=True,
    default_roots=(),
    where_to_get=(
        "Point data.root at an ImageNet (ILSVRC-2012) folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
        "(the validation images sorted into class folders, as torchvision's ImageFolder expects), holding "
        "all 1000 classes or just the subset's 100."
    ),
)


def probe_imagenet_subset(root: Path, cfg: DataConfig) -> DatasetSpec:
    from ..config_io import ConfigError
    from .imagenet_subsets import IMAGENET_SUBSETS

    if cfg.subset not in (None, *IMAGENET_SUBSETS):
        raise ConfigError(f"data.subset must be one of {sorted(IMAGENET_SUBSETS)} (or null: ucir), got {cfg.subset!r}")
    size = required_image_size(cfg, "e.g. 256, with data.crop=resized, data.crop_size=224")
    return dataclasses.replace(IMAGENET_SUBSET, image_size=size)


@register_dataset(IMAGENET_SUBSET, probe=probe_imagenet_subset)
def _load_imagenet_subset(root: Path, cfg: DataConfig):
    from .imagenet_subsets import IMAGENET_SUBSETS

    wnids = list(IMAGENET_SUBSETS[cfg.subset or "ucir"])
    splits = []
    for split in ("train", "val"):
        folder = root / split
        present = set(_classes(folder)) if folder.is_dir() else set()
        missing = [w for w in wnids if w not in present]
        if missing:
            raise DatasetError(
                f"imagenet_subset ({cfg.subset or 'ucir'}): {len(missing)} of its 100 classes have no folder in {folder} "
                f"(e.g. {missing[:3]}). {IMAGENET_SUBSET.where_to_get}"
            )
        limit = cfg.train_per_class if split == "train" else cfg.test_per_class
        splits.append(_read_split(folder, wnids, required_image_size(cfg, "e.g. 256"), limit))
    return splits[0], splits[1], wnids


# --- numpy arrays ------------------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the arrays in a .npz, from their headers only."""
    if not path.is_file():
        raise DatasetError(f"numpy: {path} is not a file. {NUMPY.where_to_get}")
    try:
        with zipfile.ZipFile(path) as archive:
            out = {}
            for member in archive.namelist():
                with archive.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(fh)
                out[member.removesuffix(".npy")] = (shape, dtype)
            return out
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DatasetError(f"numpy: cannot read {path} as a .npz file ({exc}). {NUMPY.where_to_get}") from None


def _layout(shape: tuple[int, ...], key: str, path: Path) -> tuple[int, int, bool]:
    """(channels, side, channels_last) of an image array's shape."""
    if len(shape) == 3:
        c, h, w, last = 1, shape[1], shape[2], False
    elif len(shape) == 4 and shape[3] in (1, 3):
        c, h, w, last = shape[3], shape[1], shape[2], True
    elif len(shape) == 4 and shape[1] in (1, 3):
        c, h, w, last = shape[1], shape[2], shape[3], False
    else:
        raise DatasetError(f"numpy: {path}: {key} has shape {shape}; expected N x H x W, N x H x W x C or N x C x H x W with C = 1 or 3")
    if h != w:
        raise DatasetError(f"numpy: {path}: {key} holds {h} x {w} images; resize or crop them to squares")
    return c, h, last


def probe_numpy(root: Path, cfg: DataConfig) -> DatasetSpec:
    shapes = _npz_shapes(root)
    missing = [k for k in _NPZ_KEYS if k not in shapes]
    if missing:
        raise DatasetError(f"numpy: {root} lacks {missing} (it holds {sorted(shapes)}). {NUMPY.where_to_get}")
    for key in ("x_train", "x_test"):
        if shapes[key][1] != np.uint8:
            raise DatasetError(
                f"numpy: {root}: {key} has dtype {shapes[key][1]}, expected uint8; convert with "
                "(x * 255).round().astype(np.uint8) if it holds floats in [0, 1]"
            )
    channels, side, _ = _layout(shapes["x_train"][0], "x_train", root)
    if _layout(shapes["x_test"][0], "x_test", root)[:2] != (channels, side):
        raise DatasetError(f"numpy: {root}: x_train and x_test hold images of different shapes")
    with np.load(root) as arrays:
        num_classes = int(np.asarray(arrays["y_train"]).max()) + 1
    return dataclasses.replace(NUMPY, num_classes=num_classes, channels=channels, image_size=side)


@register_dataset(NUMPY, probe=probe_numpy)
def _load_numpy(root: Path, cfg: DataConfig):
    spec = probe_numpy(root, cfg)
    with np.load(root) as arrays:
        splits = []
        for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
            x = np.asarray(arrays[x_key])
            y = np.asarray(arrays[y_key])
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise DatasetError(f"numpy: {root}: {y_key} must be a 1-d integer array, got shape {y.shape} dtype {y.dtype}")
            _, _, channels_last = _layout(x.shape, x_key, root)
            images = torch.from_numpy(np.ascontiguousarray(x))
            images = images.unsqueeze(1) if x.ndim == 3 else images.permute(0, 3, 1, 2) if channels_last else images
            splits.append(ImageSplit(images.contiguous(), torch.from_numpy(y.astype(np.int64))))
        missing = sorted(set(range(spec.num_classes)) - set(splits[0].labels.unique().tolist()))
        if missing:
            raise DatasetError(f"numpy: {root}: classes {missing} have no training image; labels must be 0..K-1, each used")
        names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays.files else [str(k) for k in range(spec.num_classes)]
    return splits[0], splits[1], names
