"""iCaRL (Rebuffi et al., CVPR 2017): sigmoid BCE with distillation targets, herding, NME.

Recipe of the original code: ResNet-32 without the final ReLU, lr 2.0 divided by 5 at
epochs 49 and 63 of 70, weight decay 2e-5, batch 128, per-pixel mean subtraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig
from . import register_method
from .base import Method, Step


@dataclass
class ICaRLConfig(MethodConfig):
    name: str = "icarl"


def icarl_bce_loss(logits: torch.Tensor, y: torch.Tensor, old_logits: torch.Tensor | None, total_classes: int) -> torch.Tensor:
    """Alg. 3 (UpdateRepresentation): BCE over classes; new classes one-hot, old ones the old net's sigmoid.

    Normalized by the dataset's class count because the original output layer holds all
    classes from the start and averages over all of them; lr 2.0 is tuned for that scale.
    """
    targets = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    if old_logits is not None:
        n_old = old_logits.shape[1]
        targets = torch.cat([torch.sigmoid(old_logits), targets[:, n_old:]], dim=1)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    return bce / (logits.shape[0] * total_classes)


@register_method
class ICaRL(Method):
    name = "icarl"
    Config = ICaRLConfig
    has_nme = True

    def forward(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.old_model is not None:
            with torch.no_grad():
                out["old_logits"] = self.old_model(x)["logits"]
        return out

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return {"bce": icarl_bce_loss(out["logits"], y, out.get("old_logits"), self.spec.num_classes)}
