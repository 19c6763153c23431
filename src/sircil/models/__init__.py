"""Backbones and classifier heads, by name."""

from __future__ import annotations

from typing import Callable

from ..config import Config, register_check
from ..config_io import require

from .classifiers import IncrementalLinear
from .resnet import Backbone, CifarResNet, ResNet18

BackboneFactory = Callable[..., Backbone]
BACKBONES: dict[str, BackboneFactory] = {
    "resnet20": lambda in_channels, **kw: CifarResNet(20, in_channels, **kw),
    "resnet32": lambda in_channels, **kw: CifarResNet(32, in_channels, **kw),
    "resnet44": lambda in_channels, **kw: CifarResNet(44, in_channels, **kw),
    "resnet18": lambda in_channels, **kw: ResNet18(in_channels, "imagenet", **_resnet18_options(**kw)),
    "resnet18_cifar": lambda in_channels, **kw: ResNet18(in_channels, "cifar", **_resnet18_options(**kw)),
}
# ResNet-18 has no zero-padding shortcut and keeps its ReLUs inside the network; config
# validation rejects the CIFAR-ResNet-only switches for it, so dropping them here loses nothing.
RESNET18_FIXED = {"shortcut": "B", "block_relu": True}


def _resnet18_options(last_relu: bool = True, zero_init_residual: bool = False, **fixed) -> dict:
    return {"last_relu": last_relu, "zero_init_residual": zero_init_residual}


def build_backbone(name: str, in_channels: int, **options) -> Backbone:
    return BACKBONES[name](in_channels, **options)


@register_check
def check_backbone(cfg: Config) -> None:
    m = cfg.model
    require(m.backbone in BACKBONES, f"model.backbone must be one of {sorted(BACKBONES)}, got {m.backbone!r}")
    if m.backbone.startswith("resnet18"):
        for key, value in RESNET18_FIXED.items():
            require(
                getattr(m, key) == value,
                f"model.{key}={getattr(m, key)!r} is a CIFAR-ResNet option; {m.backbone} needs model.{key}={value!r}",
            )


__all__ = ["BACKBONES", "RESNET18_FIXED", "build_backbone", "Backbone", "CifarResNet", "IncrementalLinear", "ResNet18"]
