"""Prediction with a PyTorch checkpoint: the model half of `segtool predict x.pt`.

Files, batching, threads and outputs are segtool.inference.outputs' job, and what happens to
an image before and after the model is segtool.inference.processing's (both shared with the
ONNX Runtime path); this module only builds the function that runs the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segtool.inference.processing import InputSpec, tiling_of
from segtool.models.checkpoint import load_model
from segtool.models.device import layout, pick_device
from segtool.models.tta import TestTimeAugment


@dataclass(frozen=True)
class TorchModel:
    run: Callable[[np.ndarray], np.ndarray]  # NCHW float32 -> NKhw float32 logits
    spec: InputSpec
    colours: list[list[int]]
    names: list[str]
    device: str


def torch_model(checkpoint: Path, *, tta: bool = False, device: str = "auto", tile: bool | None = None) -> TorchModel:
    """The network of a checkpoint (test-time augmented with `tta`) on `device` (auto, cpu
    or cuda, chosen here, never by the checkpoint), ready to run; `tile` forces tiling on
    or off, None leaves it to the config's data.tile_above."""
    cfg, model = load_model(checkpoint)
    if tta:
        model = TestTimeAugment(model)
    where = pick_device(device, "--device")
    fmt = layout(cfg)
    model = model.to(where, memory_format=fmt).eval()
    d = cfg.data

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(where).contiguous(memory_format=fmt)).float().cpu().numpy()

    spec = InputSpec(
        d.num_classes,
        tuple(d.mean),
        tuple(d.std),
        tuple(d.eval_size) if d.eval_size else None,
        tiling_of(d).forced(tile),
    )
    return TorchModel(run, spec, [list(c.color) for c in d.classes], [c.name for c in d.classes], where.type)
