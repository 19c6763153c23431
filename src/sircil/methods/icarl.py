"""iCaRL (Rebuffi et al., CVPR 2017): sigmoid BCE with distillation targets, herding, NME.

Recipe of the original code: ResNet-32 without the final ReLU, lr 2.0 divided by 5 at
epochs 49 and 63 of 70, weight decay 2e-5, batch 128, per-pixel mean subtraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig
from ..training.context import HeadSpec
from ..training.phase import Step
from .base import DistillsLogits
from .registry import register_method


@dataclass
class ICaRLConfig(MethodConfig):
    name: str = "icarl"


def icarl_targets(y: torch.Tensor, old_logits: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Alg. 3 (UpdateRepresentation): one-hot labels, the old classes' columns replaced by the old net's sigmoid."""
    targets = F.one_hot(y, num_classes).float()
    if old_logits is None:
        return targets
    return torch.cat([torch.sigmoid(old_logits.float()), targets[:, old_logits.shape[1]:]], dim=1)


def icarl_bce_loss(
    logits: torch.Tensor, y: torch.Tensor, old_logits: torch.Tensor | None, total_classes: int, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Alg. 3: sum over classes of BCE(sigmoid(g_k(x)), target_k).

    Normalized by the dataset's class count because the original output layer holds all
    classes from the start and averages over all of them; lr 2.0 is tuned for that scale.
    ``sample_weight`` (mean 1) re-weights samples (SIR on a sigmoid head).
    """
    targets = icarl_targets(y, old_logits, logits.shape[1]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1)
    if sample_weight is not None:
        bce = bce * sample_weight
    return bce.sum() / (logits.shape[0] * total_classes)


@register_method
class ICaRL(DistillsLogits):
    name = "icarl"
    Config = ICaRLConfig
    has_nme = True
    inference = "nme"  # iCaRL classifies by the nearest mean of exemplars (Alg. 1)
    head = HeadSpec(kind="sigmoid")
    options: ICaRLConfig

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return {"bce": icarl_bce_loss(out["logits"], y, out.get("old_logits"), self.spec.num_classes, out.get("sample_weight"))}
