"""Backbones and classifier heads, by name."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .classifiers import IncrementalLinear
from .resnet import CifarResNet

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {
    "resnet20": lambda in_channels, **kw: CifarResNet(20, in_channels, **kw),
    "resnet32": lambda in_channels, **kw: CifarResNet(32, in_channels, **kw),
    "resnet44": lambda in_channels, **kw: CifarResNet(44, in_channels, **kw),
}


def build_backbone(name: str, in_channels: int, **options) -> nn.Module:
    return BACKBONES[name](in_channels, **options)


__all__ = ["BACKBONES", "build_backbone", "CifarResNet", "IncrementalLinear"]
