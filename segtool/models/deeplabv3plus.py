"""DeepLabV3+ head (Chen et al. 2018), made light: depthwise-separable ASPP and decoder.

ASPP rates follow the encoder's output stride (6/12/18 at stride 16, doubled at 8, halved
at 32) so the receptive field in pixels stays the same; a stride-4 skip restores edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segtool.models.blocks import conv_bn_relu, sep_conv, tap


class ASPP(nn.Module):
    def __init__(self, cin: int, channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, channels)] + [sep_conv(cin, channels, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128):
        super().__init__()
        scale = 16 / strides[-1]
        rates = tuple(max(1, round(r * scale)) for r in (6, 12, 18))
        self.aspp = ASPP(in_channels[-1], channels, rates)
        low_channels = max(16, channels * 3 // 8)
        self.low_tap = tap(strides, 4, "the DeepLabV3+ head")
        self.low = conv_bn_relu(in_channels[self.low_tap], low_channels)
        self.fuse = nn.Sequential(sep_conv(channels + low_channels, channels), sep_conv(channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(feats[self.low_tap])
        x = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))
