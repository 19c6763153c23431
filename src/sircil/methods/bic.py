"""BiC, bias correction (Wu et al., "Large Scale Incremental Learning", CVPR 2019).

Official code: wuyuebupt/LargeScaleIncrementalLearning (TensorFlow, ``resnet.py``
``resnet_model_fn``, ``imagenet_main.py`` ``main``, ``utils_imagenet.py`` ``prepare_validation``).
Stage 1 trains the whole network on the new data and the exemplars, less the validation images,
with lambda KD + (1 - lambda) CE, lambda = old / seen classes and KD at T = 2 against the previous
model's bias-corrected logits. Stage 2 freezes the network and fits two scalars on the
validation images, the same number of every class: the new classes' logits become
alpha * o + beta (Eq. 4), trained with CE plus 0.1 * l2_loss(beta) = 0.05 beta^2. Only the
latest step's correction is applied, at inference and inside the old model that the next step
distils.

Stage 2's validation images, ``method.validation``:
- ``pool`` (default, the official ``prepare_validation``): before the first step a random pool of
  P = max(1, floor(val_fraction * m)) images of every class is set aside (m: the memory per class
  at the first increment); they are never trained on, herded or stored as exemplars. Each step
  fits the correction on the first v = max(1, floor(val_fraction * m_t)) pool images of every
  class seen, and the old classes train on their best-ranked m_t - v exemplars, so exemplars
  plus validation images stay within the memory, the official budget; at m = 1 the old class
  keeps its one exemplar beside its pool image.
- ``split`` (sircil before): v images of every class taken at random from the step's training
  set, the old classes' from their exemplars (images the model was trained on when the class was
  new). Where an old class would be left with no exemplar to train on (m = 1), its exemplar
  serves both stages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config as RunConfig, MethodConfig
from ..config_io import ConfigError
from ..data.datasets import DatasetSpec
from ..data.memory import Memory
from ..data.scenario import Scenario
from ..models import IncrementalLinear
from ..training.context import StepContext
from ..training.phase import Phase, Step, derive_seed
from .base import DistillsLogits, IncrementalNet, classification_loss, distillation_loss
from .registry import register_method


VALIDATIONS = ("pool", "split")


@dataclass
class BiCConfig(MethodConfig):
    name: str = "bic"
    temperature: float = 2.0
    validation: str = "pool"  # "pool": held out of training from the start (official); "split": from the step's training set
    val_fraction: float = 0.1
    # stage 2; null: train.epochs / train.lr / train.milestones (PyCIL)
    bias_epochs: int | None = None
    bias_lr: float | None = None
    bias_milestones: list[int] | None = None
    beta_l2: float = 0.1  # weight of tf.nn.l2_loss(beta) = beta^2 / 2

    def validate(self, cfg: RunConfig) -> None:
        if self.temperature <= 0 or not 0 < self.val_fraction < 1 or self.beta_l2 < 0:
            raise ConfigError(
                f"method.temperature must be > 0, method.val_fraction in (0, 1), method.beta_l2 >= 0; got "
                f"{self.temperature}, {self.val_fraction}, {self.beta_l2}"
            )
        if (self.bias_epochs is not None and self.bias_epochs < 1) or (self.bias_lr is not None and self.bias_lr <= 0):
            raise ConfigError(f"method.bias_epochs must be >= 1 and method.bias_lr > 0, got {self.bias_epochs}, {self.bias_lr}")
        if self.validation not in VALIDATIONS:
            raise ConfigError(f"method.validation must be one of {list(VALIDATIONS)}, got {self.validation!r}")


class BiasCorrectedNet(IncrementalNet):
    """IncrementalNet whose logits of the classes in ``corrected`` become alpha * o + beta."""

    corrected: torch.Tensor  # a registered buffer (below)

    def __init__(self, backbone: nn.Module, head: IncrementalLinear):
        super().__init__(backbone, head)
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(()))
        self.register_buffer("corrected", torch.zeros(0, dtype=torch.bool))

    def expand(self, n_new: int) -> None:
        self.head.expand(n_new)
        self.corrected = torch.cat([self.corrected, self.corrected.new_zeros(n_new)])

    def correct(self, start: int, end: int) -> None:
        """From now on the correction acts on classes [start, end), starting as the identity."""
        with torch.no_grad():
            self.alpha.fill_(1.0)
            self.beta.zero_()
            self.corrected.zero_()
            self.corrected[start:end] = True

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        out["logits"] = bias_correction(out["logits"], self.corrected, self.alpha, self.beta)
        return out


def bias_correction(logits: torch.Tensor, corrected: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Eq. 4: q_k = alpha o_k + beta for the new classes k, q_k = o_k for the old ones."""
    return torch.where(corrected, alpha * logits + beta, logits)


def rank_in_class(y: torch.Tensor) -> torch.Tensor:
    """Each element's position among the elements of its class, in order."""
    rank = torch.empty(y.shape, dtype=torch.long, device=y.device)
    for k in torch.unique(y).tolist():  # one pass per class, not per sample
        members = torch.nonzero(y == k).flatten()
        rank[members] = torch.arange(members.numel(), device=y.device)
    return rank


def validation_split(
    indices: torch.Tensor, labels: torch.Tensor, per_class: int, generator: torch.Generator, shared: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices: ``per_class`` random images of every class held out;
    classes flagged in ``shared`` (too few images to spare) keep theirs in training too."""
    order = indices[torch.randperm(indices.numel(), generator=generator, device=generator.device).to(indices.device)]
    y = labels[order]
    held = rank_in_class(y) < per_class
    keep = ~held | shared[y]
    return order[keep], order[held]


def validation_pool(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """pool[k]: ``size`` random training-set indices of class k, the official per-class validation
    pool. Drawn on the CPU, so a run's pool does not depend on its device."""
    y_all = labels.cpu()
    counts = torch.bincount(y_all)
    if (counts <= size).any():
        raise ValueError(f"BiC's validation pool takes {size} images of every class, and a class has only {int(counts.min())}")
    order = torch.randperm(y_all.numel(), generator=generator)
    y = y_all[order]
    rank = rank_in_class(y)
    held = rank < size
    pool = torch.empty(counts.numel(), size, dtype=torch.long)
    pool[y[held], rank[held]] = order[held]
    return pool.to(labels.device)


def first_per_class(indices: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The first ``keep[k]`` indices of every class k, in the order given."""
    y = labels[indices]
    return indices[rank_in_class(y) < keep[y]]


@register_method
class BiC(DistillsLogits):
    name = "bic"
    Config = BiCConfig
    # val_fraction is not among them: it sizes the pool, which the base step goes without
    incremental_options = ("temperature", "bias_epochs", "bias_lr", "bias_milestones", "beta_l2")
    options: BiCConfig
    model: BiasCorrectedNet

    def __init__(self, cfg: RunConfig, spec: DatasetSpec):
        super().__init__(cfg, spec)
        self.pool: torch.Tensor | None = None  # pool[k]: class k's validation images (validation: pool)
        self.split: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's (training, validation) indices

    def build_model(self) -> BiasCorrectedNet:
        return BiasCorrectedNet(self.build_backbone(), IncrementalLinear(self.feature_dim))

    def expand(self, step: Step) -> None:
        self.model.expand(step.num_new)

    def withheld(self, labels: torch.Tensor) -> torch.Tensor:
        """The validation pool, drawn from the run's seed alone (a resumed run draws the same)."""
        mask = super().withheld(labels)
        if self.options.validation != "pool":
            return mask
        base_classes = Scenario.from_config(self.cfg.scenario, self.spec.num_classes).end(0)
        size = self.validation_size(Memory(self.cfg.memory).quota(base_classes))
        self.pool = validation_pool(labels, size, torch.Generator().manual_seed(derive_seed(self.cfg.seed, "bic-pool")))
        mask[self.pool.flatten()] = True
        return mask

    def validation_size(self, exemplars: int) -> int:
        """Validation images per class for ``exemplars`` per old class: the official floor(10%), at least one."""
        return max(1, int(self.options.val_fraction * exemplars))

    def begin_step(self, ctx: StepContext) -> None:
        super().begin_step(ctx)  # the old model keeps the previous step's correction for distillation
        step = ctx.step
        self.split = None
        if step.index == 0:
            return
        self.model.correct(step.start, step.end)
        counts = ctx.class_counts()
        per_class = self.validation_size(int(counts[: step.num_old].min()))
        if self.options.validation == "pool":
            if self.pool is None:
                raise RuntimeError("BiC's validation pool is drawn by withheld() before the first step")
            per_class = min(per_class, self.pool.shape[1])
            self.split = self.pool_split(ctx, self.pool, counts, per_class)
            ctx.log.info(
                "BiC: %d images held out for bias correction (%d per class) from the validation pool; the old classes train on "
                "%d exemplars each", self.split[1].numel(), per_class, max(1, int(counts[: step.num_old].min()) - per_class),
            )
            return
        shared = torch.zeros_like(counts, dtype=torch.bool)
        shared[: step.num_old] = counts[: step.num_old] <= per_class
        self.split = validation_split(ctx.indices, ctx.labels, per_class, ctx.generator("bic-validation"), shared)
        ctx.log.info(
            "BiC: %d images held out for bias correction (%d per class)%s", self.split[1].numel(), per_class,
            f"; {int(shared.sum())} old classes too small to spare theirs share them with training" if shared.any() else "",
        )

    def pool_split(self, ctx: StepContext, pool: torch.Tensor, counts: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the new classes' images and each old class's first exemplars (herding rank), ``per_class``
        fewer than the memory holds, but at least one; validation: the first ``per_class`` pool images of every class seen."""
        keep = counts.clone()
        keep[: ctx.step.num_old] = (counts[: ctx.step.num_old] - per_class).clamp(min=1)
        return first_per_class(ctx.indices, ctx.labels, keep), pool[: ctx.step.num_seen, :per_class].flatten()

    def param_groups(self, step: Step) -> list[dict]:
        bias = {id(self.model.alpha), id(self.model.beta)}
        return [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in bias]}]

    def main_phase(self, phase: Phase, step: Step) -> Phase:
        return phase if self.split is None else dataclasses.replace(phase, indices=self.split[0])

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        ce = classification_loss(out["logits"], y)
        if step.num_old == 0:
            return {"ce": ce}
        lam = step.num_old / step.num_seen
        return {"ce": (1 - lam) * ce, "kd": lam * distillation_loss(out["logits"], out["old_logits"], self.options.temperature)}

    def after_step(self, ctx: StepContext) -> None:
        """Stage 2: alpha and beta on the validation split, the network frozen (eval mode)."""
        if self.split is None:
            return
        o, tc, model = self.options, self.cfg.train, self.model

        def loss_fn(x: torch.Tensor, y: torch.Tensor):
            with torch.no_grad():
                raw = IncrementalNet.forward(model, x)["logits"]
            logits = bias_correction(raw, model.corrected, model.alpha, model.beta)
            return {"ce": F.cross_entropy(logits, y), "beta_l2": o.beta_l2 * model.beta.square() / 2}, logits

        ctx.fit(self.extra_phase(
            "bias", self.split[1], o.bias_epochs or tc.epochs, o.bias_lr or tc.lr, loss_fn, [model.alpha, model.beta],
            scheduler=tc.scheduler, milestones=list(tc.milestones if o.bias_milestones is None else o.bias_milestones),
            lr_decay=tc.lr_decay, weight_decay=0.0, train_mode=model.eval, augment=False,
        ))
        ctx.log.info("BiC: new classes' logits corrected as %.4f * o + %.4f", float(model.alpha.detach()), float(model.beta.detach()))
