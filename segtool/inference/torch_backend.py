"""Prediction with a PyTorch checkpoint: the model half of `segtool predict x.pt`.

Files, batching, threads and outputs are segtool.inference.outputs' job, and what happens to
an image before and after the model is segtool.inference.processing's (both shared with the
ONNX Runtime path); this module only builds the function that runs the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from segtool.config import Config
from segtool.inference.outputs import Predictor
from segtool.inference.processing import input_spec
from segtool.models.checkpoint import load_model
from segtool.models.device import memory_format, pick_device
from segtool.models.tta import TestTimeAugment


def torch_runner(
    model: torch.nn.Module, device: torch.device, fmt: torch.memory_format
) -> Callable[[np.ndarray], np.ndarray]:
    """`run` for a Predictor: a stack of preprocessed inputs (NCHW float32) through `model`
    on `device` in `fmt`, logits back as NKhw float32."""

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(device).contiguous(memory_format=fmt)).float().cpu().numpy()

    return run


def torch_predictor(
    model: torch.nn.Module,
    cfg: Config,
    device: torch.device,
    *,
    batch_size: int = 4,
    tile: bool | None = None,
    label: str = "",
) -> Predictor:
    """A Predictor of an in-memory network trained with `cfg`, put in eval mode on `device`
    in its training memory format: what training validates, `segtool evaluate x.pt` scores and the
    benchmarks run peers through. torch parallelises inside each forward: one stream."""
    fmt = memory_format(cfg)
    model.to(device, memory_format=fmt).eval()
    d = cfg.data
    return Predictor(
        torch_runner(model, device, fmt),
        input_spec(d, tile),
        [list(c.color) for c in d.classes],
        [c.name for c in d.classes],
        batch_size,
        1,
        model=label,
        backend="torch",
        device=device.type,
        data=d,
    )


def torch_model(
    checkpoint: Path, *, tta: bool = False, device: str = "auto", tile: bool | None = None, batch_size: int = 4
) -> Predictor:
    """The predictor of a checkpoint (test-time augmented with `tta`) on `device` (auto, cpu
    or cuda, chosen here, never by the checkpoint); `tile` forces tiling on or off, None
    leaves it to the config's data.tile_above."""
    cfg, model = load_model(checkpoint)
    if tta:
        model = TestTimeAugment(model)
    return torch_predictor(model, cfg, pick_device(device, "--device"), batch_size=batch_size, tile=tile)
