"""Prediction with a PyTorch checkpoint: the model half of `segtool predict x.pt`.

Files, batching, threads and outputs are segtool.engine.outputs' job (shared with the
ONNX Runtime path); this module only turns a batch of images into class maps at each
image's own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segtool.data.loader import pad_collate
from segtool.data.transforms import build_eval_transform
from segtool.engine.checkpoint import load_model
from segtool.engine.common import pick_device
from segtool.engine.evaluate import native_logits
from segtool.engine.outputs import PredictBatch


def torch_predictor(checkpoint: Path) -> tuple[PredictBatch, list]:
    """A batch predictor for a checkpoint, and the class colours its outputs use."""
    cfg, model = load_model(checkpoint)
    device = pick_device(cfg.train.device)
    model = model.to(device).eval()
    transform = build_eval_transform(cfg)
    collate = pad_collate(cfg.data.ignore_index)

    @torch.inference_mode()
    def predict_batch(images: list[np.ndarray]) -> list[np.ndarray]:
        samples = [
            {"image": transform(image=img)["image"], "mask": torch.zeros(img.shape[:2], dtype=torch.long), "index": i}
            for i, img in enumerate(images)
        ]
        batch = collate(samples)
        logits = model(batch["image"].to(device)).float().cpu()
        return [
            native_logits(logits[i], batch["image_size"][i], img.shape[:2]).argmax(0).numpy().astype(np.uint8)
            for i, img in enumerate(images)
        ]

    return predict_batch, [c.color for c in cfg.data.classes]
