"""Small conv building blocks shared by the decoder heads."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def sep_conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise-separable 3x3: a fraction of a full conv's cost, which is what a CPU budget wants."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        conv_bn_relu(cin, cout, 1),
    )


def tap(strides: list[int], stride: int, what: str) -> int:
    """Index of the first encoder feature map at `stride`: heads pick their inputs by the
    strides the encoder declares, not by list position."""
    if stride not in strides:
        raise ValueError(f"{what} needs features at stride {stride}; the encoder gives strides {strides}")
    return strides.index(stride)
