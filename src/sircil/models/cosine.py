"""Cosine classifiers: UCIR's cosine-normalized head and PODNet's Local Similarity Classifier.

Both return per-class similarities *before* any scale; the method applies its (learned)
scale, so that SIR can express its inheritance-transfer margins in cosine units.
Weights are kept per step in a ParameterList, so the rows of old classes can be frozen
by leaving their parameter out of the optimizer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CosineClassifier(nn.Module):
    """``proxies`` weight vectors per class; similarity per proxy is cos(x, w) (UCIR) or
    -||x/|x| - w/|w|||^2 = 2 cos - 2 (PODNet's LSC); proxies merge by a softmax over the
    class's proxies (PODNet: gamma 1), i.e. sum_k softmax(gamma s_k) s_k."""

    device_anchor: torch.Tensor  # a registered buffer (below)

    def __init__(self, in_features: int, proxies: int = 1, similarity: str = "cosine", merge_gamma: float = 1.0):
        super().__init__()
        if similarity not in ("cosine", "neg_squared_distance"):
            raise ValueError(f"unknown similarity {similarity!r}")
        self.in_features = in_features
        self.proxies = proxies
        self.similarity = similarity
        self.merge_gamma = merge_gamma
        self.weights = nn.ParameterList()
        # the first step's weights must be created where the model lives, and an empty
        # ParameterList moves with nothing: this buffer follows ``.to(device)``
        self.register_buffer("device_anchor", torch.empty(0), persistent=False)

    @property
    def out_features(self) -> int:
        return sum(w.shape[0] for w in self.weights) // self.proxies

    def expand(self, n_new: int) -> None:
        w = torch.empty(n_new * self.proxies, self.in_features, device=self.device_anchor.device)
        nn.init.kaiming_normal_(w, nonlinearity="linear")
        self.weights.append(nn.Parameter(w))

    def imprint(self, class_features: list[torch.Tensor]) -> None:
        """Set the newest step's weights from normalized features, one tensor per new class holding
        ``proxies`` rows (a class mean, or k-means centres), scaled to the mean norm of the old rows."""
        new = F.normalize(torch.cat(class_features), dim=1)
        old = torch.cat(list(self.weights[:-1])) if len(self.weights) > 1 else None
        norm = old.norm(dim=1).mean() if old is not None else 1.0
        with torch.no_grad():
            self.weights[-1].copy_(new * norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(torch.cat(list(self.weights)), dim=1)
        cos = F.linear(F.normalize(x, dim=1), w)
        s = cos if self.similarity == "cosine" else 2 * cos - 2
        if self.proxies == 1:
            return s
        s = s.view(x.shape[0], -1, self.proxies)
        return (torch.softmax(self.merge_gamma * s, dim=-1) * s).sum(-1)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20) -> torch.Tensor:
    """Lloyd's k-means on the device; returns k centres (fewer samples than k: samples repeated)."""
    n = x.shape[0]
    if n <= k:
        return x[torch.arange(k, device=x.device) % n]
    centres = x[torch.randperm(n, generator=generator, device=generator.device)[:k].to(x.device)]
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


class ScaledCosineNet(nn.Module):
    """Backbone + cosine head + learned scale (init 1): logits = scale * similarities.

    ``min_scale`` keeps the scale at or above a floor; ``return_maps`` also returns each
    stage's output (for spatial distillation)."""

    def __init__(self, backbone: nn.Module, head: CosineClassifier, min_scale: float | None = None, return_maps: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.scale = nn.Parameter(torch.ones(()))
        self.min_scale = min_scale
        self.return_maps = return_maps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.return_maps:
            features, out["maps"] = self.backbone(x, return_maps=True)
        else:
            features = self.backbone(x)
        similarities = self.head(features)
        scale = self.scale if self.min_scale is None else self.scale.clamp(min=self.min_scale)
        out.update(logits=scale * similarities, similarities=similarities, scale=scale, features=features)
        return out


def old_classes_frozen(model: ScaledCosineNet) -> list[nn.Parameter]:
    """Every trainable parameter but the weights of the classes of earlier steps."""
    old = model.head.weights[:-1]
    return [p for p in model.parameters() if p.requires_grad and all(p is not w for w in old)]
