"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of n basic blocks, 16/32/64 channels.

ResNet-32 has n = 5. Variants used by the anchors are switches, not copies:
``last_relu=False`` drops the ReLU after the final block (iCaRL, UCIR), ``block_relu=False``
after every other residual addition too (PODNet), ``shortcut`` picks zero-padding (option A)
or 1x1 conv + BN (option B) downsampling shortcuts, ``zero_init_residual`` starts each
block's last BatchNorm at gamma 0 (PODNet). ``return_maps`` gives PODNet's four attention maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # torchvision is imported where a ResNet-18 is built, not with this module
    from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock


class Backbone(nn.Module):
    """A feature extractor: images -> pooled features of ``out_dim`` (``return_maps``: with each stage's output)."""

    out_dim: int


def run_stages(x: torch.Tensor, stages, return_maps: bool):
    """Stage by stage; pooled features, and each stage's output map when asked (POD-spatial)."""
    maps = []
    for stage in stages:
        x = stage(x)
        maps.append(x)
    features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return (features, maps) if return_maps else features


class ShortcutA(nn.Module):
    """Stride-2 subsampling plus zero channels: no parameters."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str, relu_out: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu_out = relu_out
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            if shortcut == "A":
                self.shortcut = ShortcutA(out_ch - in_ch)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.relu_out else out


class CifarResNet(Backbone):
    def __init__(
        self,
        depth: int = 32,
        in_channels: int = 3,
        last_relu: bool = True,
        shortcut: str = "A",
        block_relu: bool = True,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        widths = (16, 32, 64)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_ch = widths[0]
        for s, width in enumerate(widths):
            blocks = []
            for b in range(n):
                last = s == len(widths) - 1 and b == n - 1
                blocks.append(BasicBlock(in_ch, width, 2 if (b == 0 and s > 0) else 1, shortcut, relu_out=last_relu if last else block_relu))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        # PODNet's CIFAR ResNet keeps the last block apart (its ``stage_4``) and distils four maps:
        # stages 1 and 2, stage 3 without its last block, that last block. A plain tuple, so the
        # parameters keep their names under ``stages``.
        self.map_stages = (stages[0], stages[1], stages[2][:-1], stages[2][-1])
        self.out_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        return run_stages(F.relu(self.bn1(self.conv1(x))), self.map_stages if return_maps else self.stages, return_maps)


class _BlockWithoutReLU(nn.Module):
    """A torchvision BasicBlock whose output skips the final ReLU (pre-ReLU features)."""

    def __init__(self, block: TorchvisionBasicBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        out = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
        return out + (b.downsample(x) if b.downsample is not None else x)


class ResNet18(Backbone):
    """torchvision's ResNet-18 (1x1 conv + BN shortcuts) with the stem the image size needs.

    ``stem="imagenet"``: 7x7 stride-2 convolution and max-pool (224-pixel images);
    ``stem="cifar"``: 3x3 stride-1 convolution, no max-pool, as DER and PyCIL use on
    32-pixel images. 512-dimensional pooled features; ``return_maps`` gives the 4 stage outputs.
    """

    def __init__(self, in_channels: int = 3, stem: str = "imagenet", last_relu: bool = True, zero_init_residual: bool = False):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, zero_init_residual=zero_init_residual)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if not last_relu:
            net.layer4[-1] = _BlockWithoutReLU(net.layer4[-1])
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.out_dim = 512

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        return run_stages(self.stem(x), self.stages, return_maps)
