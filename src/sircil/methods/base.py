"""The contract between a method and the shared incremental trainer.

A method declares only what differs from the others: how its model grows, what its
forward pass returns (and, in its ``head``, which entry holds the logits its classification
loss sees: the ones SIR and other plug-ins adjust), its losses as named terms, optional
phases after the main training, and whether it classifies by nearest exemplar mean. It
sees a step through its :class:`StepContext`, never the trainer, and never writes a
training loop, an optimizer, a checkpoint or a metric.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config as RunConfig, MethodConfig, non_default
from ..data.datasets import DatasetSpec
from ..models import Backbone, IncrementalLinear, build_backbone
from ..training.context import HeadSpec, StepContext
from ..training.phase import LossFn, Phase, Step


class IncrementalNet(nn.Module):
    """Backbone + growing head; returns the logits and the pooled features."""

    def __init__(self, backbone: nn.Module, head: IncrementalLinear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"logits": self.head(features), "features": features}


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen_copy(model: ModuleT) -> ModuleT:
    """A copy that never trains: eval mode (BatchNorm statistics fixed), no gradients."""
    old = copy.deepcopy(model)
    old.eval()
    old.requires_grad_(False)
    return old


@runtime_checkable
class GrowingHead(Protocol):
    """A classifier that gains rows for each step's new classes (IncrementalLinear, CosineClassifier)."""

    def expand(self, n_new: int) -> None: ...


class Method:
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    has_nme: ClassVar[bool] = False
    # how the method classifies a new image: "cnn" (its logits) or "nme" (nearest exemplar class mean)
    inference: ClassVar[str] = "cnn"
    # The classifier the classification loss meets: the logits entry plug-ins adjust, the scale of
    # cosine similarities where there is one (SIR's IT margins are given before it), the kind; an
    # instance may name more (DER's auxiliary head, with method.sir_aux), never another kind.
    head: HeadSpec = HeadSpec()
    # Options that act only from the first increment on: left out of the base-step cache key, so
    # runs that differ only in them share one trained base model (tests/test_base_cache.py trains
    # the base step with each of them changed and checks it is bit for bit the same).
    incremental_options: ClassVar[tuple[str, ...]] = ()
    # The method whose base step this one trains, where it is another's (DDE trains UCIR's).
    base_step_of: ClassVar[str | None] = None
    # A method declares its own: ``options`` an instance of its ``Config``, ``model`` and ``old_model``
    # (a frozen copy of ``model``) of the class its ``build_model`` returns.
    options: MethodConfig
    model: nn.Module
    old_model: nn.Module | None

    def __init__(self, cfg: RunConfig, spec: DatasetSpec):
        self.cfg = cfg
        self.options = cfg.method
        self.spec = spec
        self.model = self.build_model()
        self.old_model = None

    def build_model(self) -> nn.Module:
        return IncrementalNet(self.build_backbone(), IncrementalLinear(self.feature_dim))

    def build_backbone(self) -> Backbone:
        m = self.cfg.model
        backbone = build_backbone(
            m.backbone, self.spec.channels, last_relu=m.last_relu, shortcut=m.shortcut,
            block_relu=m.block_relu, zero_init_residual=m.zero_init_residual,
        )
        self.feature_dim = backbone.out_dim
        return backbone

    def expand(self, step: Step) -> None:
        """Grow the model for the step's new classes (structure only; resume replays it): by default
        its ``head``; a method whose model has none overrides this."""
        head = self.model.head
        assert isinstance(head, GrowingHead), f"{type(self).__name__}'s model has no head with expand(n_new): override Method.expand"
        head.expand(step.num_new)

    def withheld(self, labels: torch.Tensor) -> torch.Tensor:
        """A mask over the training split (``labels``): images the run never trains on nor stores in the
        memory, decided once before the first step (BiC's validation pool). None by default."""
        return torch.zeros_like(labels, dtype=torch.bool)

    def begin_step(self, ctx: StepContext) -> None:
        """Called before training a step, after :meth:`expand`; keeps the previous model for distillation.
        ``ctx`` gives the step's data (e.g. ``ctx.embed_classes`` for weight imprinting)."""
        self.old_model = frozen_copy(self.model) if ctx.step.index > 0 else None

    def forward(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return self.model(x)

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def main_phase(self, phase: Phase, step: Step) -> Phase:
        """The step's main training phase, built from ``train:``; a method may adjust it (e.g. warmup)."""
        return phase

    def param_groups(self, step: Step) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def eval_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference outputs: ``logits`` for CNN accuracy, ``features`` for nearest-mean accuracy."""
        return self.model(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features for herding and class means; the same space as ``eval_logits``'s features."""
        return self.eval_logits(x)["features"]

    def after_step(self, ctx: StepContext) -> None:
        """Optional phases after the main training and the memory update (e.g. classifier finetuning)."""

    def extra_phase(self, name: str, indices: torch.Tensor, epochs: int, lr: float, loss_fn: LossFn, params: list[torch.Tensor], **options: Any) -> Phase:
        """A phase of the method's own (classifier finetuning, balanced re-training) with the main
        training's momentum and weight decay unless ``options`` say otherwise."""
        options = {"momentum": self.cfg.train.momentum, "weight_decay": self.cfg.train.weight_decay, **options}
        return Phase(name=name, indices=indices, epochs=epochs, lr=lr, loss_fn=loss_fn, param_groups=[{"params": params}], **options)

    @classmethod
    def base_step_key(cls, options: MethodConfig) -> dict[str, Any]:
        """The method's part of the base-step cache key: the name of the method whose base step it
        trains and its options at non-default values, less the incremental ones."""
        kept = {k: v for k, v in non_default(options).items() if k not in cls.incremental_options}
        return {"name": cls.base_step_of or cls.name, **kept}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])


class DistillsLogits(Method):
    """A method whose losses read the frozen old model's logits over the old classes (``old_logits``)."""

    def forward(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.old_model is not None:
            with torch.no_grad():
                # the old model was copied after expand: its columns for the new classes are untrained
                out["old_logits"] = self.old_model(x)["logits"][:, : step.num_old]
        return out


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def distillation_loss(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """BiC / WA Eq. 2 (Hinton's KD): -sum_k softmax(old / T)_k log softmax(new / T)_k over the old classes, mean over the batch."""
    targets = F.softmax(old_logits.float() / temperature, dim=1)
    return -(targets * F.log_softmax(logits[:, : old_logits.shape[1]].float() / temperature, dim=1)).sum(1).mean()
