"""Exemplar memory: per-class rankings of training-set indices, never image copies.

A class's exemplars are the first q entries of its ranking, q being the current
quota (m per class, or a fixed total spread over the classes seen). Shrinking the
quota therefore drops the lowest-ranked exemplars, as iCaRL does.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import Config, register_check
from ..config_io import require
from ..config_sections import MemoryConfig

Selection = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
SELECTIONS: dict[str, Selection] = {}


def register_selection(name: str) -> Callable[[Selection], Selection]:
    def deco(fn: Selection) -> Selection:
        SELECTIONS[name] = fn
        return fn

    return deco


@register_selection("herding")
def herding(features: torch.Tensor, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """iCaRL herding: greedily pick the sample that brings the running mean of the
    picked (L2-normalized) features closest to the class mean. Returns positions, in rank order."""
    n = features.shape[0]
    m = min(m, n)
    feats = F.normalize(features.float(), dim=1)
    mean = feats.mean(0)
    picked = torch.empty(m, dtype=torch.long, device=feats.device)
    running = torch.zeros_like(mean)
    taken = torch.zeros(n, dtype=torch.bool, device=feats.device)
    for k in range(m):
        candidate_means = (running.unsqueeze(0) + feats) / (k + 1)
        dist = (candidate_means - mean).pow(2).sum(1).masked_fill(taken, float("inf"))
        idx = torch.argmin(dist)
        picked[k] = idx
        taken[idx] = True
        running = running + feats[idx]
    return picked


@register_selection("random")
def random_selection(features: torch.Tensor, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    n = features.shape[0]
    perm = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
    return perm[: min(m, n)].to(features.device)


class Memory:
    def __init__(self, cfg: MemoryConfig):
        self.per_class = cfg.per_class
        self.total = cfg.total
        self.selection = cfg.selection
        self.ranked: dict[int, torch.Tensor] = {}

    def quota(self, classes_seen: int) -> int:
        """Exemplars per class once ``classes_seen`` classes are stored (never above the total)."""
        if self.per_class is not None:
            return self.per_class
        assert self.total is not None, "MemoryConfig.validate: exactly one of per_class and total is set"
        return self.total // max(classes_seen, 1)

    @property
    def classes(self) -> list[int]:
        return sorted(self.ranked)

    def indices(self) -> torch.Tensor:
        """Training-set indices of all current exemplars, grouped by class."""
        q = self.quota(len(self.ranked))
        parts = [self.ranked[k][:q] for k in self.classes]
        if not parts:
            return torch.empty(0, dtype=torch.long)
        return torch.cat(parts)

    def counts(self) -> dict[int, int]:
        q = self.quota(len(self.ranked))
        return {k: min(q, int(self.ranked[k].numel())) for k in self.classes}

    def add_classes(
        self,
        class_indices: dict[int, torch.Tensor],
        embed: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator,
    ) -> None:
        """Rank the samples of each new class. ``embed`` maps training indices to features."""
        q = self.quota(len(self.ranked) + len(class_indices))
        select = SELECTIONS[self.selection]
        for k, idx in sorted(class_indices.items()):
            if q == 0:
                self.ranked[k] = idx[:0].cpu()
                continue
            feats = embed(idx)
            order = select(feats, q, generator)
            self.ranked[k] = idx[order.to(idx.device)].cpu()

    def state_dict(self) -> dict:
        return {"ranked": {int(k): v.clone() for k, v in self.ranked.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ranked = {int(k): v.clone() for k, v in state["ranked"].items()}



def balanced_subset(indices: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random class-balanced undersample of ``indices``: every class present keeps as many
    samples as the rarest one has. ``labels`` are the labels of the whole split."""
    shuffled = indices[torch.randperm(indices.numel(), generator=generator, device=generator.device).to(indices.device)]
    y = labels[shuffled]
    y_sorted, order = torch.sort(y, stable=True)
    counts = torch.bincount(y_sorted)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(y_sorted.numel(), device=y.device) - first[y_sorted]
    quota = counts[counts > 0].min()
    return shuffled[order[rank < quota]]


@register_check
def check_selection(cfg: Config) -> None:
    m = cfg.memory
    require(m.selection in SELECTIONS, f"memory.selection must be one of {sorted(SELECTIONS)}, got {m.selection!r}")
