"""Batched inference: CNN predictions, features, and nearest-mean-of-exemplars (NME)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .data.augment import Normalizer

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def batched(images: torch.Tensor, batch_size: int, normalizer: Normalizer, channels_last: bool):
    for i in range(0, images.shape[0], batch_size):
        x = normalizer.eval_view(images[i: i + batch_size])
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def infer(forward: Forward, images: torch.Tensor, batch_size: int, normalizer: Normalizer, channels_last: bool, keys=("logits", "features")) -> dict[str, torch.Tensor]:
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for x in batched(images, batch_size, normalizer, channels_last):
        out = forward(x)
        for k in keys:
            outputs[k].append(out[k].float())
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in outputs.items()}


@torch.inference_mode()
def embed_images(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int, normalizer: Normalizer, channels_last: bool, flip: bool = False) -> torch.Tensor:
    """Features of ``images`` (and of their mirror images when ``flip``, averaged after L2 normalization)."""
    feats = []
    for x in batched(images, batch_size, normalizer, channels_last):
        f = F.normalize(embed(x).float(), dim=1)
        if flip:
            f = F.normalize(f + F.normalize(embed(x.flip(3)).float(), dim=1), dim=1)
        feats.append(f)
    return torch.cat(feats)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """L2-normalized mean of each class's (normalized) features; classes with no sample get zeros."""
    sums = torch.zeros(num_classes, features.shape[1], device=features.device)
    sums.index_add_(0, labels, features)
    return F.normalize(sums, dim=1)


def nme_predict(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return torch.cdist(F.normalize(features, dim=1), means).argmin(1)
