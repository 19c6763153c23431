"""UCIR / LUCIR (Hou et al., CVPR 2019): cosine normalization, less-forget constraint, inter-class separation.

Recipe of the official code (hshustc/CVPR19_Incremental_Learning) on CIFAR-100: ResNet-32
without the final ReLU and with 1x1-conv shortcuts, 160 epochs, lr 0.1 / 10 at 80 and 120,
weight decay 5e-4; the cosine head's old-class weights frozen in increments, new ones
imprinted; herding with 20 exemplars per class; CNN and NME evaluation.

Optional (``method.cbf_epochs > 0``; off by default, as the official code runs it only on
ImageNet-Full): the class-balanced finetuning of its ``cbf_class_incremental_cosine_imagenet.py``
(``--cb_finetune``, default ``--ft_flag 2``): after each increment and the memory update,
every class weight, old and new, is finetuned on the exemplar memory (m per class) with the
backbone and its BatchNorm statistics fixed and the scale sigma left out of the optimizer;
the official values are 20 epochs, lr 0.01, x0.1 at 10, the main phase's weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import Config, MethodConfig
from ..config_io import ConfigError
from ..data.memory import balanced_subset
from ..models.cosine import CosineClassifier, ScaledCosineNet, old_classes_frozen
from ..training.context import HeadSpec, StepContext
from ..training.phase import Step
from .base import Method
from .registry import register_method


@dataclass
class UCIRConfig(MethodConfig):
    name: str = "ucir"
    lambda_base: float = 5.0  # less-forget weight, multiplied by sqrt(old / new)
    margin: float = 0.5  # margin ranking
    hard_negatives: int = 2  # K
    ranking_weight: float = 1.0
    # Class-balanced finetuning after each increment; 0 = off. Official (with --cb_finetune):
    # --ft_epochs 20, --ft_base_lr 0.01, --ft_lr_strat [10].
    cbf_epochs: int = 0
    cbf_lr: float = 0.01
    cbf_milestones: list[int] = field(default_factory=lambda: [10])

    def validate(self, cfg: Config) -> None:
        if self.lambda_base < 0 or self.margin < 0 or self.ranking_weight < 0 or self.hard_negatives < 1:
            raise ConfigError("method.lambda_base, method.margin, method.ranking_weight must be >= 0 and method.hard_negatives >= 1")
        if self.cbf_epochs < 0 or self.cbf_lr <= 0:
            raise ConfigError(f"method.cbf_epochs must be >= 0 and method.cbf_lr > 0, got {self.cbf_epochs} and {self.cbf_lr}")
        stones = self.cbf_milestones
        if self.cbf_epochs > 0 and (list(stones) != sorted(set(stones)) or any(not 0 < e < self.cbf_epochs for e in stones)):
            raise ConfigError(
                f"method.cbf_milestones must increase strictly between 0 and method.cbf_epochs={self.cbf_epochs}, got {stones}"
            )


def less_forget_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """UCIR Sec. 3.2, less-forget constraint: 1 - cos(f*(x), f(x)) between old and new normalized features."""
    return (1 - F.cosine_similarity(features, old_features, dim=1)).mean()


def margin_ranking_loss(cosines: torch.Tensor, y: torch.Tensor, num_old: int, k: int, margin: float) -> torch.Tensor:
    """UCIR Sec. 3.3, inter-class separation: for old-class samples, the ground-truth cosine must beat
    each of the K highest new-class cosines by ``margin`` (unscaled cosines)."""
    is_old = (y < num_old).float()
    target = cosines.gather(1, y.unsqueeze(1))
    hardest = cosines[:, num_old:].topk(min(k, cosines.shape[1] - num_old), dim=1).values
    hinge = (margin - target + hardest).clamp(min=0).sum(1)
    # a mask, not boolean indexing, keeps the batch shape static (no host sync)
    return (hinge * is_old).sum() / (is_old.sum().clamp(min=1) * hardest.shape[1])


@register_method
class UCIR(Method):
    name = "ucir"
    Config = UCIRConfig
    # typed as the base's, not as these seven: DDE adds its own
    incremental_options: ClassVar[tuple[str, ...]] = (
        "lambda_base", "margin", "hard_negatives", "ranking_weight", "cbf_epochs", "cbf_lr", "cbf_milestones",
    )
    has_nme = True
    head = HeadSpec(scale="scale", kind="cosine")
    options: UCIRConfig
    model: ScaledCosineNet
    old_model: ScaledCosineNet | None

    def build_model(self) -> ScaledCosineNet:
        backbone = self.build_backbone()
        return ScaledCosineNet(backbone, CosineClassifier(self.feature_dim))

    def begin_step(self, ctx: StepContext) -> None:
        super().begin_step(ctx)
        step = ctx.step
        if step.index > 0:
            feats = ctx.embed_classes(range(step.start, step.end))
            self.model.head.imprint([feats[k].mean(0, keepdim=True) for k in range(step.start, step.end)])

    def param_groups(self, step: Step) -> list[dict[str, Any]]:
        return [{"params": old_classes_frozen(self.model)}]  # old-class weights: lr 0, no weight decay

    def forward(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.old_model is not None:
            with torch.no_grad():
                out["old_features"] = self.old_model.backbone(x)
        return out

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(out["logits"], y)}
        if step.num_old > 0:
            o = self.options
            weight = o.lambda_base * math.sqrt(step.num_old / step.num_new)
            terms["less_forget"] = weight * less_forget_loss(out["features"], out["old_features"])
            terms["margin_ranking"] = o.ranking_weight * margin_ranking_loss(out["similarities"], y, step.num_old, o.hard_negatives, o.margin)
        return terms

    def after_step(self, ctx: StepContext) -> None:
        """Class-balanced finetuning (the official ``cbf_`` variant): the class weights alone, old and
        new, on the exemplar memory, which the official code holds at m per class (``balanced_subset``
        keeps it exact should a class have fewer images than m)."""
        o, step, model = self.options, ctx.step, self.model
        if step.index == 0 or o.cbf_epochs == 0:
            return
        indices = balanced_subset(ctx.memory_indices(), ctx.labels, ctx.generator("cbf"))

        def loss_fn(x: torch.Tensor, y: torch.Tensor):
            # The official loss is the main one. Its less-forget term compares features of a backbone
            # that does not move (lr 0), so it is constant and left out; no SIR either: its offsets
            # describe the imbalanced step, not this balanced set.
            with torch.no_grad():
                features = model.backbone(x)
            similarities = model.head(features)
            logits = model.scale.detach() * similarities  # sigma is in none of the official parameter groups
            margin = margin_ranking_loss(similarities, y, step.num_old, o.hard_negatives, o.margin)
            return {"ce": F.cross_entropy(logits, y), "margin_ranking": o.ranking_weight * margin}, logits

        ctx.fit(self.extra_phase(
            "cbf", indices, o.cbf_epochs, o.cbf_lr, loss_fn, list(model.head.weights),
            scheduler="step", milestones=list(o.cbf_milestones), lr_decay=self.cfg.train.lr_decay,
            train_mode=model.eval,  # the official fix_bn: BatchNorm statistics fixed
        ))
