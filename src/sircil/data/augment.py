"""Batched augmentation on the training device: pad + random crop or random resized crop, flip, brightness, normalize.

One call handles a whole uint8 batch with a handful of tensor ops, and every random
draw comes from the generator passed in, so a seed fixes the augmentation stream. With
data-parallel training each rank augments only its ``shard = (rank, world)`` of the
global batch (its every world-th sample) yet draws for the whole batch and keeps its
share, so every sample gets the parameters it would get in a single process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config_sections import DataConfig
from .datasets import DatasetSpec

Shard = tuple[int, int]  # (rank, world): this process's every world-th sample of the global batch
WHOLE: Shard = (0, 1)


def _uniform(n: int, shard: Shard, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` U(0, 1) draws: this shard's part of the draws for the whole global batch."""
    rank, world = shard
    return torch.rand(n * world, generator=generator, device=device)[rank::world]


def _integers(high: int, n: int, shard: Shard, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    rank, world = shard
    return torch.randint(0, high, (n * world,), generator=generator, device=device)[rank::world]


class Normalizer:
    """uint8 -> float, then either (x - mean) / std per channel or minus a per-pixel mean image.

    ``fill`` is the normalized value of the padding used by random crops: black for
    mean/std (torchvision pads the uint8 image with zeros), zero (the mean image) for
    per-pixel mean subtraction (the original iCaRL pads after subtracting the mean).
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor, fill: torch.Tensor, eval_crop: int | None = None):
        self.shift, self.scale, self.fill = shift, scale, fill
        self.eval_crop = eval_crop

    @classmethod
    def from_config(cls, cfg: DataConfig, spec: DatasetSpec, train_images: torch.Tensor) -> "Normalizer":
        """Computed on ``train_images``' device, from their values where :meth:`given` is None."""
        given = cls.given(cfg, spec, train_images.device)
        if given is not None:
            return given
        device = train_images.device
        if cfg.normalize == "pixel_mean":
            shift = train_images.float().mean(0, keepdim=True) / 255.0
            ones = torch.ones(1, spec.channels, 1, 1, device=device)
            return cls(shift, ones, torch.zeros_like(ones), cfg.crop_size)
        mean, std = channel_stats(train_images)
        if (cfg.mean or spec.mean) is not None:
            mean = torch.tensor(cfg.mean or spec.mean, device=device)
        if (cfg.std or spec.std) is not None:
            std = torch.tensor(cfg.std or spec.std, device=device)
        return cls.per_channel(mean, std, cfg.crop_size)

    @classmethod
    def given(cls, cfg: DataConfig, spec: DatasetSpec, device: torch.device | str) -> "Normalizer | None":
        """The normalizer when the config or the dataset gives both mean and std (no image is
        read); None when it is measured on the training images (per-pixel mean, or missing stats)."""
        mean, std = cfg.mean or spec.mean, cfg.std or spec.std
        if cfg.normalize == "pixel_mean" or mean is None or std is None:
            return None
        return cls.per_channel(torch.tensor(mean, device=device), torch.tensor(std, device=device), cfg.crop_size)

    @classmethod
    def per_channel(cls, mean: torch.Tensor, std: torch.Tensor, eval_crop: int | None) -> "Normalizer":
        shift, scale = mean.view(1, -1, 1, 1).float(), std.view(1, -1, 1, 1).float()
        return cls(shift, scale, -shift / scale, eval_crop)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.shift) / self.scale

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """What evaluation, herding and class means see: the center crop (with random resized
        crops in training), normalized."""
        if self.eval_crop is not None:
            h, w = images.shape[-2:]
            top, left = (h - self.eval_crop) // 2, (w - self.eval_crop) // 2
            images = images[..., top: top + self.eval_crop, left: left + self.eval_crop]
        return self(images)

    def to(self, device: torch.device | str) -> "Normalizer":
        return Normalizer(self.shift.to(device), self.scale.to(device), self.fill.to(device), self.eval_crop)


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks (a large split never
    becomes one float tensor)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start: start + chunk].to(torch.float64).div_(255)
        total += x.sum((0, 2, 3))
        squares += x.pow(2).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean, (squares / count - mean.pow(2)).clamp(min=1e-6).sqrt()


def random_crop(x: torch.Tensor, pad: int, fill: torch.Tensor, generator: torch.Generator, shard: Shard = WHOLE) -> torch.Tensor:
    """Pad by ``pad`` on every side with ``fill`` and take one random crop of the original size per sample."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    padded = fill.expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad: pad + h, pad: pad + w] = x
    dev = x.device
    top = _integers(2 * pad + 1, n, shard, generator, dev)
    left = _integers(2 * pad + 1, n, shard, generator, dev)
    rows = (top[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(n, c, h, w)
    cols = (left[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(n, c, h, w)
    flat = padded.flatten(2)
    index = rows * (w + 2 * pad) + cols
    return torch.gather(flat, 2, index.flatten(2)).view(n, c, h, w)


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    shard: Shard = WHOLE,
) -> torch.Tensor:
    """One random crop per sample (area fraction in ``scale``, aspect ratio log-uniform in
    ``ratio``), resized to ``size`` x ``size`` bilinearly, all samples in one grid_sample.
    A crop wider or taller than the image is clamped to it (torchvision instead retries, then
    falls back to a center crop)."""
    n = x.shape[0]
    dev = x.device
    area = scale[0] + (scale[1] - scale[0]) * _uniform(n, shard, generator, dev)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _uniform(n, shard, generator, dev))
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image's width / height
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = width / 2 + (1 - width) * _uniform(n, shard, generator, dev)
    cy = height / 2 + (1 - height) * _uniform(n, shard, generator, dev)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = width, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * cy - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, generator: torch.Generator, shard: Shard = WHOLE) -> torch.Tensor:
    flip = _uniform(x.shape[0], shard, generator, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class BatchAugment:
    def __init__(self, cfg: DataConfig, spec: DatasetSpec, normalizer: Normalizer):
        self.pad = cfg.pad
        self.crop_size = cfg.crop_size if cfg.crop == "resized" else None
        self.flip = spec.flip if cfg.flip is None else cfg.flip
        self.brightness = cfg.brightness
        self.normalizer = normalizer

    def __call__(self, images: torch.Tensor, generator: torch.Generator, shard: Shard = WHOLE) -> torch.Tensor:
        x = self.normalizer(images)
        if self.brightness > 0:
            x = self._brightness(x, generator, shard)
        if self.crop_size is not None:
            x = random_resized_crop(x, self.crop_size, generator, shard=shard)
        else:
            x = random_crop(x, self.pad, self.normalizer.fill, generator, shard)
        if self.flip:
            x = random_flip(x, generator, shard)
        return x

    def _brightness(self, x: torch.Tensor, generator: torch.Generator, shard: Shard) -> torch.Tensor:
        """ColorJitter(brightness=s): scale the raw intensity by U(1 - s, 1 + s), clamp to [0, 1]."""
        norm = self.normalizer
        raw = x * norm.scale + norm.shift
        factor = 1.0 + (_uniform(x.shape[0], shard, generator, x.device).view(-1, 1, 1, 1) * 2 - 1) * self.brightness
        return ((raw * factor).clamp(0, 1) - norm.shift) / norm.scale
