"""A light U-Net decoder (Ronneberger et al. 2015) over the encoder's skip features.

Each step upsamples to the next shallower tap, concatenates it, and refines with two
depthwise-separable convs; channels halve on the way up, ending at stride 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segtool.models.blocks import sep_conv


class UNetHead(nn.Module):
    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128):
        super().__init__()
        widths = [max(16, channels >> i) for i in range(len(in_channels) - 1)]  # e.g. 128, 64, 32, 16
        blocks = []
        cin = in_channels[-1]
        for skip_c, cout in zip(reversed(in_channels[:-1]), widths):
            blocks.append(nn.Sequential(sep_conv(cin + skip_c, cout), sep_conv(cout, cout)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.classifier(x)
