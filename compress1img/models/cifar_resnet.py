"""CIFAR ResNet-(6n+2) with "option A" shortcuts, state-dict compatible with akamaster/pytorch_resnet_cifar10.

Layout (He et al. 2016, section 4.2): a 3x3 conv with 16 channels, three stages of n BasicBlocks with
16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pooling and `linear`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially and zero-pad channels, no parameters.

    Its own class (not a lambda) so pruning can find it and adapt the channel counts.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.out_channels - self.in_channels
        # akamaster pads (out - in) / 2 on each side; the odd split only matters after pruning.
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # as akamaster, so a student starts where theirs did

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.pool(x)))


@register_model("cifar_resnet20")
def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


@register_model("cifar_resnet32")
def cifar_resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(5, num_classes)


@register_model("cifar_resnet44")
def cifar_resnet44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(7, num_classes)


@register_model("cifar_resnet56")
def cifar_resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)
