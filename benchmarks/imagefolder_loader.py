"""Throughput of the image-folder path: JPEG decoding (once per run) and on-device augmentation (every batch).

Writes a tree of ImageNet-sized JPEGs (500 x 375, smooth content plus noise, quality 90),
then measures (a) images/s of ``load_dataset`` decoding them to 256-pixel uint8 tensors
(threads, PIL with JPEG draft mode) and (b) images/s of the training augmentation (random
resized crop 224 + flip + normalize, batched) on the chosen device. Results go to
benchmarks/results/imagefolder_loader.json.

    python benchmarks/imagefolder_loader.py [--images 2000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sircil.config_sections import DataConfig
from sircil.data.augment import BatchAugment, Normalizer
from sircil.data.datasets import load_dataset, resolve_spec
from sircil.runfolder import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def write_jpegs(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375)) -> None:
    rng = np.random.default_rng(0)
    w, h = size
    ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.3, 1, h)[:, None, None]
    for i in range(images):
        split = "val" if (i // classes) % 10 == 0 else "train"
        folder = root / split / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(ramp * rng.uniform(0.5, 1, 3) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        cfg = DataConfig(dataset="imagefolder", root=tmp, image_size=256, crop="resized", crop_size=224, pad=0)
        start = time.perf_counter()
        dataset = load_dataset(cfg)
        decode_seconds = time.perf_counter() - start
    images = dataset.train.images.to(args.device)
    spec = resolve_spec(DataConfig(dataset="imagenet_subset", image_size=256))
    augment = BatchAugment(cfg, spec, Normalizer.from_config(cfg, spec, images))
    generator = torch.Generator(device=args.device).manual_seed(0)
    batches = max(1, min(20, images.shape[0] // args.batch))
    for warm in (True, False):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in range(2 if warm else batches):
            out = augment(images[(b * args.batch) % images.shape[0]:][: args.batch], generator)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        augment_seconds = time.perf_counter() - start
    total = dataset.train.images.shape[0] + dataset.test.images.shape[0]
    result = {
        "jpegs": total,
        "jpeg_size": [500, 375],
        "decode_images_per_second": round(total / decode_seconds, 1),
        "augment_device": args.device,
        "augment_batch": args.batch,
        "augment_images_per_second": round(batches * args.batch / augment_seconds, 1),
        "augment_output_shape": list(out.shape),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    atomic_write_json(ROOT / "benchmarks" / "results" / "imagefolder_loader.json", result)
    print(result)


if __name__ == "__main__":
    main()
