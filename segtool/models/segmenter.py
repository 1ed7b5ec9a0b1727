"""Encoder + decoder head -> logits at the input size; `build_model` is where config meets model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segtool.config import ModelConfig, ResolvedModel
from segtool.models.deeplabv3plus import DeepLabV3PlusHead
from segtool.models.encoder import MobileNetV2Encoder
from segtool.models.lraspp import LRASPPHead
from segtool.models.unet import UNetHead

HEADS = {"lraspp": LRASPPHead, "deeplabv3plus": DeepLabV3PlusHead, "unet": UNetHead}


class Segmenter(nn.Module):
    def __init__(self, encoder: MobileNetV2Encoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head
        # Per-class logit offsets a calibrated checkpoint brings (train.loss.calibrate); None
        # while training. Not in the state dict: the checkpoint keeps them beside the weights.
        self.register_buffer("calibration_offsets", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(x))
        # Any input size works, odd ones included: the head's strided output is resized exactly.
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.calibration_offsets is not None:  # after the resize: the same sums validation scored
            logits = logits + self.calibration_offsets.to(logits.dtype).view(1, -1, 1, 1)
        return logits


def build_model(cfg: ResolvedModel | ModelConfig, num_classes: int, pretrained: bool = True) -> Segmenter:
    """The model a config describes. `pretrained=False` skips loading encoder weights,
    for when a checkpoint's own weights are about to replace them."""
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    if not isinstance(cfg, ResolvedModel):  # a plain ModelConfig that names its head (a "auto" one is refused)
        cfg = ResolvedModel.model_validate(cfg.model_dump())
    encoder = MobileNetV2Encoder(cfg.width_mult, cfg.output_stride, cfg.pretrained if pretrained else None)
    head = HEADS[cfg.head](encoder.out_channels, encoder.strides, num_classes, cfg.head_channels)
    return Segmenter(encoder, head)
