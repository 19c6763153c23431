"""Finetuning with replay: cross-entropy on new data plus the exemplar memory, nothing else.

The reference point every method is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MethodConfig
from ..training.phase import Step
from .base import Method, classification_loss
from .registry import register_method


@dataclass
class FinetuneConfig(MethodConfig):
    name: str = "finetune"


@register_method
class Finetune(Method):
    name = "finetune"
    Config = FinetuneConfig
    options: FinetuneConfig

    def losses(self, out: dict[str, torch.Tensor], y: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return {"ce": classification_loss(out["logits"], y)}
