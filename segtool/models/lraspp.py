"""LR-ASPP head (Howard et al., "Searching for MobileNetV3", 2019): the fastest head.

The deepest features pass a 1x1 conv gated by a global-pooling attention branch; a 1x1
classifier over stride-8 features adds back the detail lost at the bottom.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segtool.models.blocks import conv_bn_relu, tap


class LRASPPHead(nn.Module):
    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128):
        super().__init__()
        self.low_tap = tap(strides, 8, "the LR-ASPP head")
        low_c, high_c = in_channels[self.low_tap], in_channels[-1]
        self.cbr = conv_bn_relu(high_c, channels)
        # No BatchNorm after global pooling: it breaks at batch size 1.
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_c, channels, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_c, num_classes, 1)
        self.high_classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low, high = feats[self.low_tap], feats[-1]
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)
