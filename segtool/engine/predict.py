"""Prediction with a PyTorch checkpoint: the model half of `segtool predict x.pt`.

Files, batching, threads and outputs are segtool.engine.outputs' job (shared with the
ONNX Runtime path); this module only turns a batch of images into class maps at each
image's own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segtool.data.processing import predict_classes, tiling_of
from segtool.engine.checkpoint import load_model
from segtool.engine.common import layout, pick_device
from segtool.engine.outputs import PredictBatch
from segtool.models.tta import TestTimeAugment


def torch_predictor(
    checkpoint: Path, *, tta: bool = False, device: str = "auto", tile: bool | None = None
) -> tuple[PredictBatch, list, list[str]]:
    """A batch predictor for a checkpoint (test-time augmented with `tta`) on `device`
    (auto, cpu or cuda, chosen here, never by the checkpoint; `tile` forces tiling on or
    off, None leaves it to the config's data.tile_above), and the class colours its
    outputs use, and their names."""
    cfg, model = load_model(checkpoint)
    if tta:
        model = TestTimeAugment(model)
    device = pick_device(device, "--device")
    fmt = layout(cfg)
    model = model.to(device, memory_format=fmt).eval()
    d = cfg.data

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(device).contiguous(memory_format=fmt)).float().cpu().numpy()

    tiling = tiling_of(d).forced(tile)

    def predict_batch(images: list[np.ndarray]) -> list[np.ndarray]:
        return predict_classes(images, run, d.num_classes, d.mean, d.std, d.eval_size, tiling)

    return predict_batch, [c.color for c in cfg.data.classes], [c.name for c in cfg.data.classes]
