"""Wide ResNet-d-k for CIFAR (Zagoruyko & Komodakis 2016) with pre-activation blocks.

The teachers/students of the single-image distillation paper. Parameter names follow the widely used
xternalz/WideResNet-pytorch code (`block1.layer.0.convShortcut`, `fc`, ...) so its CIFAR checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.equal_in_out = in_channels == channels and stride == 1
        # A 1x1 projection when the shape changes; it sees the pre-activated input, as in the reference code.
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_channels, channels, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(act) + out


class NetworkBlock(nn.Module):
    def __init__(self, blocks: int, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(in_channels if i == 0 else channels, channels,
                                                 stride if i == 0 else 1) for i in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.relu(self.bn1(x)))))


@register_model("wrn_16_4")
def wrn_16_4(num_classes: int = 10) -> WideResNet:
    return WideResNet(16, 4, num_classes)


@register_model("wrn_40_4")
def wrn_40_4(num_classes: int = 10) -> WideResNet:
    return WideResNet(40, 4, num_classes)
