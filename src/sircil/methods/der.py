"""DER (Yan, Xie, He, CVPR 2021): dynamically expandable representation.

Recipe of the official code (Rhyssiyan/DER-ClassIL.pytorch, ``exps/der_womask``) on
CIFAR-100 B50: ResNet-18 with a 3x3 stride-1 stem and no max-pool; at every step a new
feature extractor, initialized from the previous one, is trained while the older ones stay
frozen (no gradient, BatchNorm in eval mode); a classifier over the concatenated features,
regenerated at every step, and an auxiliary classifier on the new extractor's features
(the new classes plus one "old" class) with weight 1. Increments: 170 epochs, lr 0.1, 10
warmup epochs after which both classifiers are re-initialized, then x0.1 at 100 and 120
(counted after the warmup); base step 200 epochs, x0.1 at 60/120/160. After each
increment the classifier alone is re-trained from scratch on a class-balanced random
undersample of the step's training set (new data + memory), logits divided by 5, 30 epochs,
lr 0.1, x0.1 at 15 (``inclearn/models/incmodel.py`` ``_after_task`` ->
``inclearn/convnet/utils.py`` ``finetune_last_layer``).

The paper's channel masks and sparsity loss (pruning) are not in the official code and
not here: parameters grow by one extractor per step, and every run reports the count.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config as RunConfig, MethodConfig
from ..config_io import ConfigError
from ..data.datasets import DatasetSpec
from ..data.memory import balanced_subset
from ..models import Backbone
from ..training.context import HeadSpec, StepContext
from ..training.phase import Phase, Step
from .base import Method, classification_loss
from .registry import register_method


@dataclass
class DERConfig(MethodConfig):
    name: str = "der"
    aux_weight: float = 1.0
    warmup_epochs: int = 10
    # The official code warms up every step it trains itself; a B50 base step is its separate
    # "pretrain" phase without warmup (false), a B0 first task warms up like the others (true).
    warmup_base: bool = False
    # The official HEAD's "decouple" block (exps/der_womask/cifar100/{b0,b50}/10steps/configs/1.yaml,
    # since commit 4226958; before it 50 epochs, lr 0.05, x0.1 at 15 and 30).
    balanced_epochs: int = 30
    balanced_lr: float = 0.1
    balanced_milestones: list[int] = field(default_factory=lambda: [15])
    balanced_temperature: float = 5.0
    # SIR's frequency compensation on the auxiliary loss too (its "old" class holds every exemplar):
    # the head names the auxiliary logits for plug-ins to adjust
    sir_aux: bool = False

    def validate(self, cfg: RunConfig) -> None:
        if self.aux_weight < 0 or self.balanced_epochs < 0 or self.balanced_lr <= 0 or self.balanced_temperature <= 0:
            raise ConfigError(
                "method.aux_weight and method.balanced_epochs must be >= 0, method.balanced_lr and "
                "method.balanced_temperature > 0"
            )
        if not 0 <= self.warmup_epochs < cfg.train.epochs:
            raise ConfigError(
                f"method.warmup_epochs={self.warmup_epochs} must be >= 0 and below train.epochs={cfg.train.epochs}"
            )
        stones = self.balanced_milestones
        if list(stones) != sorted(set(stones)) or any(not 0 < e < max(self.balanced_epochs, 1) for e in stones):
            raise ConfigError(
                f"method.balanced_milestones must increase strictly between 0 and method.balanced_epochs="
                f"{self.balanced_epochs}, got {stones}"
            )


def new_linear(in_features: int, out_features: int, device: torch.device) -> nn.Linear:
    """DER's classifiers: no bias, Kaiming-normal weights."""
    layer = nn.Linear(in_features, out_features, bias=False, device=device)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    return layer


class DERNet(nn.Module):
    """Frozen extractors of the earlier steps, the current step's trainable one, a classifier
    over all their features and an auxiliary classifier on the current one's."""

    def __init__(self, make_extractor: Callable[[], Backbone]):
        super().__init__()
        first = make_extractor()
        self.extractors = nn.ModuleList([first])
        self.out_dim = first.out_dim
        self.classifier: nn.Linear | None = None  # built by expand, once the step's classes are known
        self.aux_classifier: nn.Linear | None = None

    @property
    def frozen(self) -> list[nn.Module]:
        return list(self.extractors[:-1])

    def expand(self, num_new: int, num_seen: int, grow: bool) -> None:
        device = next(self.extractors[0].parameters()).device
        if grow:
            for extractor in self.extractors:
                extractor.requires_grad_(False)
                extractor.eval()
                for p in extractor.parameters():
                    p.grad = None
            fresh = copy.deepcopy(self.extractors[-1]).requires_grad_(True)
            self.extractors.append(fresh)
            self.aux_classifier = new_linear(self.out_dim, num_new + 1, device)
        self.classifier = new_linear(self.out_dim * len(self.extractors), num_seen, device)

    def train(self, mode: bool = True) -> "DERNet":
        super().train(mode)
        for extractor in self.frozen:
            extractor.eval()  # their BatchNorm statistics stay those of their own step
        return self

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(all extractors' features concatenated, the current extractor's features)."""
        with torch.no_grad():
            old = [extractor(x) for extractor in self.frozen]
        new = self.extractors[-1](x)
        return torch.cat([*old, new], dim=1), new

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.classifier is not None, "expand builds the classifier before the first forward pass"
        features, new = self.features(x)
        out = {"logits": self.classifier(features), "features": features}
        if self.aux_classifier is not None:
            out["aux_logits"] = self.aux_classifier(new)
        return out


def auxiliary_targets(y: torch.Tensor, start: int) -> torch.Tensor:
    """DER Sec. 3.2: labels of the auxiliary classifier: 0 for every old class, 1 + k - start for new class k."""
    return torch.where(y < start, torch.zeros_like(y), y - start + 1)


def auxiliary_loss(aux_logits: torch.Tensor, y: torch.Tensor, start: int) -> torch.Tensor:
    """DER Sec. 3.2, auxiliary loss L_Ha: cross-entropy of the auxiliary classifier over |new| + 1 classes."""
    return F.cross_entropy(aux_logits, auxiliary_targets(y, start))


@register_method
class DER(Method):
    name = "der"
    Config = DERConfig
    incremental_options = ("aux_weight", "balanced_epochs", "balanced_lr", "balanced_milestones", "balanced_temperature", "sir_aux")
    options: DERConfig
    model: DERNet

    def __init__(self, cfg: RunConfig, spec: DatasetSpec):
        super().__init__(cfg, spec)
        if self.options.sir_aux:
            self.head = HeadSpec(aux="aux_logits")

    def build_model(self) -> DERNet:
        return DERNet(self.build_backbone)

    def expand(self, step: Step) -> None:
        self.model.expand(step.num_new, step.num_seen, grow=step.index > 0)

    def begin_step(self, ctx: StepContext) -> None:
        # No old model: DER distils nothing, and a copy of every extractor would double the memory.
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        ctx.log.info("DER: %d extractor(s), %d parameters, %d of them trained", len(self.model.extractors), total, trainable)

    def main_phase(self, phase: Phase, step: Step) -> Phase:
        warmup = self.options.warmup_epochs
        if warmup == 0 or (step.index == 0 and not self.options.warmup_base):
            return phase
        if step.index == 0:
            warmup = min(warmup, phase.epochs - 1)
        model = self.model

        def reset_classifiers(epoch: int) -> None:
            if epoch == warmup:
                for head in (model.classifier, model.aux_classifier):
                    if head is not None:
                        head.reset_parameters()

        return dataclasses.replace(phase, warmup_epochs=warmup, on_epoch_start=reset_classifiers)

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        terms = {"ce": classification_loss(out["logits"], y)}
        if "aux_logits" in out and self.options.aux_weight > 0:
            terms["aux"] = self.options.aux_weight * auxiliary_loss(out["aux_logits"], y, step.start)
        return terms

    def after_step(self, ctx: StepContext) -> None:
        """Classifier re-training from scratch on a class-balanced undersample of the step's data."""
        o, step, model = self.options, ctx.step, self.model
        if step.index == 0 or o.balanced_epochs == 0:
            return
        indices = balanced_subset(ctx.indices, ctx.labels, ctx.generator("balanced"))
        ctx.log.info("DER: classifier re-trained on %d images, %d per class", indices.numel(), indices.numel() // step.num_seen)
        classifier = model.classifier
        assert classifier is not None, "expand builds the classifier"
        classifier.reset_parameters()

        def loss_fn(x: torch.Tensor, y: torch.Tensor):
            with torch.no_grad():
                features, _ = model.features(x)
            logits = classifier(features)
            return {"ce": F.cross_entropy(logits / o.balanced_temperature, y)}, logits

        ctx.fit(self.extra_phase(
            "balanced", indices, o.balanced_epochs, o.balanced_lr, loss_fn, [classifier.weight],
            scheduler="step", milestones=list(o.balanced_milestones), train_mode=model.eval,
        ))
