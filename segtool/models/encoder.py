"""MobileNetV2 (Sandler et al. 2018) as a multi-scale feature encoder.

torchvision's implementation (32-filter stem, inverted residuals with linear bottlenecks,
depthwise 3x3 convs) is cut into taps at strides 2, 4, 8, 16 and 32; the final 1x1 conv to
1280 channels is a classifier-only layer and is dropped. For output stride 16 or 8 the
downsampling blocks of the last stages keep stride 1 and dilate instead (as in DeepLabV3).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from segtool.errors import CheckpointError

# Index of the last block of each stage in torchvision's `features`, and its nominal stride.
_TAPS = (1, 3, 6, 13, 17)
_NOMINAL_STRIDES = (2, 4, 8, 16, 32)


def _imagenet_state() -> dict[str, torch.Tensor]:
    weights = MobileNet_V2_Weights.IMAGENET1K_V2
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # offline: URLError, socket errors, ... all mean the same to a user
        raise CheckpointError(
            f"could not download torchvision's ImageNet MobileNetV2 weights ({type(e).__name__}); "
            f"when offline, download {weights.url} elsewhere and set model.pretrained to the file's path"
        ) from None


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"model.pretrained file {path} not found; give a MobileNetV2 state-dict file, 'imagenet' or null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"model.pretrained file {path} is not a loadable state dict ({type(e).__name__}: {e})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.pretrained file {path} does not hold a state dict")
    return state


class MobileNetV2Encoder(nn.Module):
    """Input -> list of 5 feature maps; `out_channels` and `strides` describe them."""

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32, pretrained: str | None = None):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        net = mobilenet_v2(weights=None, width_mult=width_mult)
        if pretrained:
            state = _imagenet_state() if pretrained == "imagenet" else _file_state(Path(pretrained))
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as e:  # tensors of another shape: another width
                shape = next(
                    (line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0]
                )
                fix = (
                    "torchvision's ImageNet weights are for width 1.0: set model.width_mult: 1.0"
                    if pretrained == "imagenet"
                    else "give weights of this width or set model.width_mult to theirs"
                )
                raise CheckpointError(
                    f"model.pretrained {pretrained} does not fit MobileNetV2 width {width_mult} ({shape[:120]}); {fix}"
                ) from None
            # The classifier and the final 1280-wide conv are not part of the encoder.
            relevant = [k for k in missing if k.startswith("features.") and not k.startswith("features.18.")]
            if relevant or (unexpected and len(unexpected) == len(state)):
                raise CheckpointError(
                    f"model.pretrained {pretrained} does not fit MobileNetV2 width {width_mult}: "
                    f"{len(relevant)} encoder weights missing (e.g. {(relevant or unexpected)[0]})"
                )
        self.features = net.features[: _TAPS[-1] + 1]
        self._dilate(output_stride)
        self.out_channels = [self.features[i].out_channels for i in _TAPS]
        self.strides = [min(s, output_stride) for s in _NOMINAL_STRIDES]

    def _dilate(self, output_stride: int) -> None:
        stride, dilation = 2, 1  # after the stem
        for block in self.features[1:]:
            dw = next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
            if dw.stride == (2, 2):
                if stride >= output_stride:
                    dw.stride = (1, 1)
                    # The first block of a dilated stage still sees the previous rate.
                    dw.dilation, dw.padding = (dilation, dilation), (dilation, dilation)
                    dilation *= 2
                    continue
                stride *= 2
            elif dilation > 1:
                dw.dilation, dw.padding = (dilation, dilation), (dilation, dilation)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        taps = set(_TAPS)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                feats.append(x)
        return feats
