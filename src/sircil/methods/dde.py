"""DDE (Hu et al., "Distilling Causal Effect of Data in Class-Incremental Learning", CVPR 2021) on UCIR.

Official code: JoyHuYY1412/DDE_CIL, ``utils_incremental/incremental_train_and_eval_DCE_MR_LF_TDE.py``
(training) and ``compute_accuracy_TDE.py`` (inference), run on UCIR with ``--DCE --TDE --top_k 10``.
Everything of UCIR stays (cosine head, imprinting, less-forget, margin ranking); two parts are added:
- colliding-effect distillation: in the frozen old model's normalized feature space, each training
  sample's K nearest samples of the new classes (not itself); the classification loss becomes
  -log((p(x) + mean_k p(x_k)) / 2) at the label, p the current model's softmax, p(x_k) without
  gradient;
- incremental momentum effect removal: during the step, e <- 0.9 e + the batch's mean feature; at
  inference the logits lose 0.5 * sigma * cos(f, e) * cos(e, w_k).

This is a method on UCIR rather than a plug-in because it changes the batch (the neighbours'
images ride along, ``Phase.companions``) and UCIR's own cross-entropy, which the plug-in protocol
does not see.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Config as RunConfig
from ..data.datasets import DatasetSpec
from ..config_io import ConfigError
from ..training.context import StepContext
from ..training.phase import Phase, Step
from .registry import register_method
from .ucir import UCIR, UCIRConfig


@dataclass
class DDEConfig(UCIRConfig):
    name: str = "dde"
    top_k: int = 10  # --top_k
    momentum: float = 0.9  # mu, the causal embedding's momentum
    effect_weight: float = 0.5  # alpha_TDE: how much of the momentum effect inference removes

    def validate(self, cfg: RunConfig) -> None:
        super().validate(cfg)
        if self.top_k < 1 or not 0 <= self.momentum < 1 or self.effect_weight < 0:
            raise ConfigError(
                f"method.top_k must be >= 1, method.momentum in [0, 1), method.effect_weight >= 0; got "
                f"{self.top_k}, {self.momentum}, {self.effect_weight}"
            )


def nearest_new_neighbours(features: torch.Tensor, is_new: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Row i: the ``k`` positions j != i with ``is_new[j]`` nearest to ``features[i]`` (L2), nearest first."""
    candidates = torch.nonzero(is_new).flatten()
    if candidates.numel() <= 1:
        raise ValueError("colliding-effect distillation needs at least two samples of the new classes")
    k = min(k, candidates.numel() - 1)
    pool = features[candidates]
    rows = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start: start + chunk], pool)
        own = (candidates.unsqueeze(0) == torch.arange(start, start + d.shape[0], device=features.device).unsqueeze(1))
        d = d.masked_fill(own, float("inf"))
        rows.append(candidates[d.topk(k, dim=1, largest=False).indices])
    return torch.cat(rows)


def colliding_effect_loss(logits: torch.Tensor, neighbour_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DCE: NLL of (softmax(logits) + mean over the K neighbours of softmax(neighbour logits)) / 2."""
    p = F.softmax(logits.float(), dim=1)
    q = F.softmax(neighbour_logits.float(), dim=1).view(logits.shape[0], -1, logits.shape[1]).mean(1)
    return F.nll_loss(torch.log((p + q) / 2), y)


def remove_momentum_effect(logits: torch.Tensor, features: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor,
                           effect: torch.Tensor, weight: float) -> torch.Tensor:
    """TDE at inference: logits - weight * sigma * cos(f, e) * cos(e, w_k), e the step's momentum embedding."""
    e = F.normalize(effect, dim=0)
    cos_fe = F.normalize(features, dim=1) @ e
    cos_ew = F.normalize(weights, dim=1) @ e
    return logits - weight * scale * cos_fe.unsqueeze(1) * cos_ew.unsqueeze(0)


@register_method
class DDE(UCIR):
    name = "dde"
    Config = DDEConfig
    incremental_options = (*UCIR.incremental_options, "top_k", "momentum", "effect_weight")
    base_step_of = "ucir"  # the base step is UCIR's: the two DDE parts start with the first increment
    options: DDEConfig

    def __init__(self, cfg: RunConfig, spec: DatasetSpec):
        super().__init__(cfg, spec)
        self.effect: torch.Tensor | None = None  # the momentum embedding of the last increment (none after the base step)
        self.neighbours: torch.Tensor | None = None

    def begin_step(self, ctx: StepContext) -> None:
        super().begin_step(ctx)
        step = ctx.step
        self.neighbours = None
        if step.index == 0:
            return
        # The backbone has not trained yet: these are the old model's features (the official code
        # takes them from the frozen reference model).
        features = ctx.embed_indices(ctx.indices)
        labels = ctx.step_labels
        nearest = nearest_new_neighbours(features, labels >= step.start, self.options.top_k)
        self.neighbours = torch.full((ctx.labels.numel(), nearest.shape[1]), -1, dtype=torch.long, device=ctx.indices.device)
        self.neighbours[ctx.indices] = ctx.indices[nearest]
        self.effect = torch.zeros(self.feature_dim, device=features.device)
        ctx.log.info("DDE: %d nearest new-class neighbours of each of %d samples (old model's features)", nearest.shape[1], labels.numel())

    def main_phase(self, phase: Phase, step: Step) -> Phase:
        if self.neighbours is None:
            return phase
        table = self.neighbours
        return dataclasses.replace(phase, companions=lambda idx: table[idx].flatten())

    def forward(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        if self.neighbours is None or not self.model.training:
            return super().forward(x, step)
        batch = x.shape[0] // (1 + self.neighbours.shape[1])
        out = super().forward(x[:batch], step)
        # begin_step sets the momentum embedding with the neighbours
        assert self.effect is not None
        with torch.no_grad():
            out["neighbour_logits"] = self.model(x[batch:])["logits"]
            self.effect.mul_(self.options.momentum).add_(out["features"].detach().mean(0))
        return out

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        terms = super().losses(out, y, step)
        if "neighbour_logits" in out:
            del terms["ce"]
            terms = {"colliding": colliding_effect_loss(out["logits"], out["neighbour_logits"], y), **terms}
        return terms

    def eval_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.effect is not None:
            weights = torch.cat(list(self.model.head.weights))
            out["logits"] = remove_momentum_effect(out["logits"], out["features"], weights, out["scale"], self.effect, self.options.effect_weight)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "effect": self.effect}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.effect = state.get("effect")
