"""A step, an optimization phase and the seeds they draw from."""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import milestone_epochs
from ..config_sections import TrainConfig

# A phase's loss: (augmented batch, labels) -> (named loss terms, the logits its accuracy is read from)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def derive_seed(seed: int, *tags: Any) -> int:
    """An independent, reproducible seed for each (step, phase, purpose)."""
    digest = hashlib.sha256(repr((seed,) + tags).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Step:
    """Step ``index`` trains on classes ``[start, end)`` as new; ``[0, start)`` are old."""

    index: int
    start: int
    end: int

    @property
    def num_old(self) -> int:
        return self.start

    @property
    def num_new(self) -> int:
        return self.end - self.start

    @property
    def num_seen(self) -> int:
        return self.end


def sgd(groups: list[dict[str, Any]], phase: "Phase", device: torch.device) -> torch.optim.Optimizer:
    # fused on CUDA: one kernel for the whole update instead of one per parameter group
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(groups, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay, **fused)


def adam(groups: list[dict[str, Any]], phase: "Phase", device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=phase.lr, weight_decay=phase.weight_decay)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], "Phase", torch.device], torch.optim.Optimizer]] = {"sgd": sgd, "adam": adam}


@dataclass
class Phase:
    """One optimization phase: which samples, how long, which optimizer and schedule, which loss."""

    name: str
    indices: torch.Tensor
    epochs: int
    lr: float
    loss_fn: LossFn
    param_groups: list[dict[str, Any]]
    scheduler: str = "cosine"
    milestones: list[int | float] = field(default_factory=list)  # below 1: fractions of the epochs after warmup
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip_value: float | None = None
    optimizer: str = "sgd"  # a name in OPTIMIZERS
    # Puts the model in its training state each epoch (default: model.train()); a phase that
    # trains only a classifier keeps the backbone's BatchNorm statistics fixed with it.
    train_mode: Callable[[], None] | None = None
    # Linear warmup from lr / warmup_epochs to lr; the schedule (and its milestones) then
    # counts epochs from the end of the warmup, as DER's GradualWarmupScheduler does.
    warmup_epochs: int = 0
    # Called with the epoch index before each epoch (e.g. DER resets its classifiers when warmup ends).
    on_epoch_start: Callable[[int], None] | None = None
    # Called after every optimizer update (e.g. WA clips the classifier's weights to be non-negative).
    after_update: Callable[[], None] | None = None
    # Ratio-preserving batches (SS-IL): every batch of ``indices`` gets ``replay_batch`` more samples
    # drawn from ``replay_indices``, each of them about equally often over an epoch.
    replay_indices: torch.Tensor | None = None
    replay_batch: int = 0
    # Images appended to every batch, chosen from its indices (DDE: each sample's nearest new-class
    # neighbours); the loss gets them after the batch's own images and only the batch's labels.
    companions: Callable[[torch.Tensor], torch.Tensor] | None = None
    # False: the batches are seen as evaluation sees them (BiC fits its bias layer on unaugmented
    # validation images, as the official code does)
    augment: bool = True

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / self.warmup_epochs
        epoch, epochs = epoch - self.warmup_epochs, self.epochs - self.warmup_epochs
        if self.scheduler == "cosine_lagged":  # PODNet calls scheduler.step(epoch) after each epoch
            epoch = max(epoch - 1, 0)
        if self.scheduler in ("cosine", "cosine_lagged"):
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        if self.scheduler == "step":
            return self.lr * self.lr_decay ** sum(epoch >= m for m in milestone_epochs(self.milestones, epochs))
        return self.lr

    def build_optimizer(self, device: torch.device) -> torch.optim.Optimizer:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"phase {self.name}: optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        optimizer = OPTIMIZERS[self.optimizer](self.param_groups, self, device)
        for group in optimizer.param_groups:
            group.setdefault("lr_scale", 1.0)
        return optimizer


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast around forward passes and losses with ``train.precision=bf16``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_schedule(tc: TrainConfig, base: bool) -> dict[str, Any]:
    """A step's main-phase schedule as ``train:`` gives it: on the base step its own epochs, lr,
    milestones and weight decay where they are set. The base-step cache key is made from it too."""
    return {
        "epochs": (tc.base_epochs or tc.epochs) if base else tc.epochs,
        "lr": (tc.base_lr or tc.lr) if base else tc.lr,
        "scheduler": tc.scheduler,
        "milestones": (tc.base_milestones if tc.base_milestones is not None else tc.milestones) if base else tc.milestones,
        "lr_decay": tc.lr_decay,
        "momentum": tc.momentum,
        "weight_decay": tc.base_weight_decay if base and tc.base_weight_decay is not None else tc.weight_decay,
        "grad_clip_value": tc.grad_clip_value,
    }


def main_phase(tc: TrainConfig, step: Step, name: str, indices: torch.Tensor, loss_fn: LossFn, param_groups: list[dict[str, Any]]) -> Phase:
    """A step's main phase as ``train:`` gives it (``step_schedule``)."""
    return Phase(name=name, indices=indices, loss_fn=loss_fn, param_groups=param_groups, **step_schedule(tc, step.index == 0))
