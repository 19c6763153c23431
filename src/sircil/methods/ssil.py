"""SS-IL (Ahn et al., "SS-IL: Separated Softmax for Incremental Learning", ICCV 2021).

Recipe of the official code (hongjoon0805/SS-IL-Official, ``trainer/ssil.py``): every batch
holds B new-class samples and R replayed exemplars (ratio-preserving, R = 32 for B = 128);
separated softmax: the new samples' cross-entropy over the new classes' logits only, the
replayed samples' over the old classes' only, summed and divided by B + R; task-wise
knowledge distillation: for each earlier task, KL between the old and the new model's
softmax over that task's logits at T = 2, times T^2, summed over the tasks, on every sample.
Inference: one softmax over every class seen. Learning rate: task t (the base task is 0) starts at
lr / (t + 1) (``main.py``), then follows the schedule's milestones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Config as RunConfig, MethodConfig
from ..config_io import ConfigError
from ..data.datasets import DatasetSpec
from ..training.context import StepContext
from ..training.phase import Phase, Step
from .base import DistillsLogits
from .registry import register_method


@dataclass
class SSILConfig(MethodConfig):
    name: str = "ssil"
    replay_batch: int = 32  # R, replayed exemplars added to every batch of train.batch_size new samples
    temperature: float = 2.0
    # true: step t trains at train.lr / (t + 1), as the official main.py sets it for SS-IL;
    # false: train.lr in every step (sircil before issue 23)
    divide_lr_by_task: bool = True

    def validate(self, cfg: RunConfig) -> None:
        if self.replay_batch < 1 or self.temperature <= 0:
            raise ConfigError(f"method.replay_batch must be >= 1 and method.temperature > 0, got {self.replay_batch}, {self.temperature}")


def task_learning_rate(lr: float, task: int) -> float:
    """Official ``main.py`` l. 59-61: task t (0 = the base task, which keeps lr) starts at lr / (t + 1)."""
    return lr / (task + 1)


def separated_softmax_loss(logits: torch.Tensor, y: torch.Tensor, num_old: int) -> torch.Tensor:
    """SS-IL Eq. 4: CE over the new classes' logits for new samples, over the old classes' for replayed
    ones (y < num_old), averaged over the whole batch."""
    new = F.cross_entropy(logits[:, num_old:], (y - num_old).clamp(min=0), reduction="none")
    if num_old == 0:
        return new.mean()
    old = F.cross_entropy(logits[:, :num_old], y.clamp(max=num_old - 1), reduction="none")
    # a mask, not boolean indexing, keeps the batch shape static (no host sync)
    return torch.where(y < num_old, old, new).mean()


def task_wise_distillation(logits: torch.Tensor, old_logits: torch.Tensor, tasks: list[tuple[int, int]], temperature: float) -> torch.Tensor:
    """SS-IL Eq. 5: sum over earlier tasks of T^2 KL(softmax(old / T) || softmax(new / T)) on that task's classes, batch mean."""
    total = logits.new_zeros(())
    for start, end in tasks:
        target = F.softmax(old_logits[:, start:end].float() / temperature, dim=1)
        log_q = F.log_softmax(logits[:, start:end].float() / temperature, dim=1)
        total = total + F.kl_div(log_q, target, reduction="batchmean") * temperature**2
    return total


@register_method
class SSIL(DistillsLogits):
    name = "ssil"
    Config = SSILConfig
    incremental_options = ("replay_batch", "temperature", "divide_lr_by_task")
    options: SSILConfig

    def __init__(self, cfg: RunConfig, spec: DatasetSpec):
        super().__init__(cfg, spec)
        self.tasks: list[tuple[int, int]] = []  # the class range of every step so far
        self.new_indices = torch.empty(0, dtype=torch.long)  # the step's new samples, set by begin_step
        self.replay_indices: torch.Tensor | None = None

    def expand(self, step: Step) -> None:
        super().expand(step)
        self.tasks = [t for t in self.tasks if t[0] < step.start] + [(step.start, step.end)]

    def begin_step(self, ctx: StepContext) -> None:
        super().begin_step(ctx)
        step = ctx.step
        self.new_indices = ctx.indices[ctx.step_labels >= step.start]
        self.replay_indices = ctx.indices[ctx.step_labels < step.start]
        if step.num_old > 0 and step.num_new == 1:
            ctx.log.warning("SS-IL on a step of one new class: its separated softmax over the new classes is one logit, "
                            "whose cross-entropy is 0, so this class is not learned (as in the official code); "
                            "use steps of two classes or more to compare SS-IL")

    def main_phase(self, phase: Phase, step: Step) -> Phase:
        """New samples in batches of train.batch_size, each with ``replay_batch`` exemplars (none in the
        base step); the learning rate of the step's task (``divide_lr_by_task``)."""
        if self.options.divide_lr_by_task:
            phase = dataclasses.replace(phase, lr=task_learning_rate(phase.lr, step.index))
        if step.num_old == 0:
            return phase
        return dataclasses.replace(phase, indices=self.new_indices, replay_indices=self.replay_indices, replay_batch=self.options.replay_batch)

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        terms = {"separated_ce": separated_softmax_loss(out["logits"], y, step.num_old)}
        if step.num_old > 0:
            terms["task_kd"] = task_wise_distillation(out["logits"], out["old_logits"], self.tasks[:-1], self.options.temperature)
        return terms
