"""Batched augmentation on the training device: pad + random crop, flip, brightness, normalize.

One call handles a whole uint8 batch with a handful of tensor ops, and every random
draw comes from the generator passed in, so a seed fixes the augmentation stream.
"""

from __future__ import annotations

import torch

from ..config import DataConfig
from .datasets import DatasetSpec


class Normalizer:
    """uint8 -> float, then either (x - mean) / std per channel or minus a per-pixel mean image.

    ``fill`` is the normalized value of the padding used by random crops: black for
    mean/std (torchvision pads the uint8 image with zeros), zero (the mean image) for
    per-pixel mean subtraction (the original iCaRL pads after subtracting the mean).
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor, fill: torch.Tensor):
        self.shift, self.scale, self.fill = shift, scale, fill

    @classmethod
    def from_config(cls, cfg: DataConfig, spec: DatasetSpec, train_images: torch.Tensor) -> "Normalizer":
        device = train_images.device
        if cfg.normalize == "pixel_mean":
            shift = train_images.float().mean(0, keepdim=True) / 255.0
            scale = torch.ones(1, spec.channels, 1, 1, device=device)
            fill = torch.zeros(1, spec.channels, 1, 1, device=device)
        else:
            shift = torch.tensor(cfg.mean or spec.mean, device=device).view(1, -1, 1, 1)
            scale = torch.tensor(cfg.std or spec.std, device=device).view(1, -1, 1, 1)
            fill = -shift / scale
        return cls(shift, scale, fill)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.shift) / self.scale

    def to(self, device: torch.device | str) -> "Normalizer":
        return Normalizer(self.shift.to(device), self.scale.to(device), self.fill.to(device))


def random_crop(x: torch.Tensor, pad: int, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` on every side with ``fill`` and take one random crop of the original size per sample."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    padded = fill.expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad: pad + h, pad: pad + w] = x
    dev = x.device
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = (top[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(n, c, h, w)
    cols = (left[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(n, c, h, w)
    flat = padded.flatten(2)
    index = rows * (w + 2 * pad) + cols
    return torch.gather(flat, 2, index.flatten(2)).view(n, c, h, w)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class BatchAugment:
    def __init__(self, cfg: DataConfig, spec: DatasetSpec, normalizer: Normalizer):
        self.pad = cfg.pad
        self.flip = spec.flip if cfg.flip is None else cfg.flip
        self.brightness = cfg.brightness
        self.normalizer = normalizer

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.normalizer(images)
        if self.brightness > 0:
            x = self._brightness(x, generator)
        x = random_crop(x, self.pad, self.normalizer.fill, generator)
        if self.flip:
            x = random_flip(x, generator)
        return x

    def _brightness(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ColorJitter(brightness=s): scale the raw intensity by U(1 - s, 1 + s), clamp to [0, 1]."""
        norm = self.normalizer
        raw = x * norm.scale + norm.shift
        factor = 1.0 + (torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * self.brightness
        return ((raw * factor).clamp(0, 1) - norm.shift) / norm.scale
