"""WA, weight aligning (Zhao et al., "Maintaining Discrimination and Fairness in Class Incremental
Learning", CVPR 2020).

Training: cross-entropy over every class seen plus knowledge distillation of the old model's
logits at temperature T = 2, weighted as in the paper (Eq. 3, from BiC): (1 - lambda) CE +
lambda KD with lambda = old / seen classes. Weight clipping (Sec. 3.3): after every update the
classifier's weights are clipped at 0, as the pooled features they meet are non-negative.
After each increment, weight aligning (Eq. 5): the new classes' weight vectors are scaled by
gamma = mean old norm / mean new norm. The authors released no code; PyCIL's ``wa.py`` weights the
terms as the paper since February 2023 (1 and 2 before: ``method.kd_weight: 2``) and does not clip
(``method.weight_clipping: false``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import Config, MethodConfig
from ..config_io import ConfigError
from ..training.context import StepContext
from ..training.phase import Phase, Step
from .base import DistillsLogits, IncrementalNet, classification_loss, distillation_loss
from .registry import register_method


@dataclass
class WAConfig(MethodConfig):
    name: str = "wa"
    temperature: float = 2.0
    # null: the paper's (1 - lambda) CE + lambda KD, lambda = old / seen classes; a number w: CE + w KD
    kd_weight: float | None = None
    weight_clipping: bool = True

    def validate(self, cfg: Config) -> None:
        if self.temperature <= 0 or (self.kd_weight is not None and self.kd_weight < 0):
            raise ConfigError(f"method.temperature must be > 0 and method.kd_weight >= 0 or null, got {self.temperature}, {self.kd_weight}")


def align_weights(weight: torch.Tensor, num_old: int) -> float:
    """WA Eq. 5: scale the new classes' rows by gamma = mean ||w_old|| / mean ||w_new||, in place; returns gamma."""
    norms = weight.norm(dim=1)
    gamma = float(norms[:num_old].mean() / norms[num_old:].mean())
    weight[num_old:] *= gamma
    return gamma


@register_method
class WA(DistillsLogits):
    name = "wa"
    Config = WAConfig
    incremental_options = ("temperature", "kd_weight")
    options: WAConfig
    model: IncrementalNet

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        ce = classification_loss(out["logits"], y)
        if step.num_old == 0:
            return {"ce": ce}
        kd = distillation_loss(out["logits"], out["old_logits"], self.options.temperature)
        if self.options.kd_weight is not None:
            return {"ce": ce, "kd": self.options.kd_weight * kd}
        lam = step.num_old / step.num_seen
        return {"ce": (1 - lam) * ce, "kd": lam * kd}

    def main_phase(self, phase: Phase, step: Step) -> Phase:
        if not self.options.weight_clipping:
            return phase
        head = self.model.head

        def clip() -> None:
            with torch.no_grad():
                head.weight.clamp_(min=0)

        return dataclasses.replace(phase, after_update=clip)

    def after_step(self, ctx: StepContext) -> None:
        if ctx.step.index > 0:
            with torch.no_grad():
                gamma = align_weights(self.model.head.weight, ctx.step.num_old)
            ctx.log.info("WA: new classes' weights scaled by gamma %.4f", gamma)
