"""The bench's data: generated CIFAR-100-shaped images, cached as a ``.npz`` the ``numpy``
dataset reads, and the anchors' DataLoader+PIL pipeline over them."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from .data.datasets import dataset_spec
from .runfolder import atomic_write_bytes

CLASSES, SIDE, CHANNELS = 100, 32, 3
DATA_SEED = 0


def synthetic_cifar100(folder: Path, train_images: int) -> Path:
    """A cached .npz of CIFAR-100-shaped images (N x 32 x 32 x 3 uint8, as torchvision's
    CIFAR100.data, which is what the anchors' datasets hand to PIL) with balanced labels.

    Each class is a coarse colour pattern plus per-pixel noise, so that training on it
    behaves like training on images (the loss falls) rather than on pure noise; the
    throughput does not depend on the content."""
    test_images = max(CLASSES, train_images // 5)
    path = folder / f"synthetic_cifar100_{train_images}_{test_images}_seed{DATA_SEED}.npz"
    if path.is_file():
        return path
    rng = np.random.default_rng(DATA_SEED)
    coarse = rng.integers(0, 256, size=(CLASSES, SIDE // 4, SIDE // 4, CHANNELS), dtype=np.int16)
    templates = coarse.repeat(4, axis=1).repeat(4, axis=2)
    arrays: dict[str, Any] = {}  # numpy's stubs take savez's keywords for its own options
    for split, count in (("train", train_images), ("test", test_images)):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _synthetic_split(rng, templates, count)
    # written atomically: two benchmarks started together may both write it, and neither may
    # read it half-written
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _synthetic_split(rng: np.random.Generator, templates: np.ndarray, count: int, chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """``count`` noisy copies of the class templates, class counts differing by at most one;
    generated in chunks so that 50,000 images never become one int16 array."""
    labels = np.arange(count) % CLASSES
    rng.shuffle(labels)
    images = np.empty((count, SIDE, SIDE, CHANNELS), dtype=np.uint8)
    for start in range(0, count, chunk):
        y = labels[start: start + chunk]
        noise = rng.integers(-48, 49, size=(y.size, SIDE, SIDE, CHANNELS), dtype=np.int16)
        images[start: start + chunk] = np.clip(templates[y] + noise, 0, 255)
    return images, labels.astype(np.int64)


class PILTransformDataset(torch.utils.data.Dataset):
    """The anchors' training set: every sample is decoded to a PIL image and transformed alone."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def anchor_transform() -> transforms.Compose:
    """PyCIL's and PODNet's CIFAR-100 training transforms, with CIFAR-100's channel statistics
    as they hard-code them (the values do not change the cost)."""
    spec = dataset_spec("cifar100")
    return transforms.Compose([
        transforms.RandomCrop(SIDE, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])


@contextlib.contextmanager
def dataloader_batches(data: Path, batch_size: int, workers: int, device: torch.device) -> Iterator[Callable[[], torch.Tensor]]:
    """The anchors' pipeline: a shuffling DataLoader over per-sample PIL transforms, each batch
    copied to the device (from pinned memory on CUDA). Its iterator restarts every epoch, as
    in an epoch loop, so worker start-up costs what it costs them. The loader's labels are
    collated and dropped: fit pairs the batch with labels of its own, which costs the same."""
    with np.load(data) as arrays:
        dataset = PILTransformDataset(arrays["x_train"], arrays["y_train"], anchor_transform())
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True,
    )
    stream = _epochs(loader)
    try:
        yield lambda: next(stream)[0].to(device, non_blocking=True)
    finally:
        stream.close()  # ends the live iterator, and with it the worker processes


def _epochs(loader: DataLoader) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    while True:
        yield from loader
