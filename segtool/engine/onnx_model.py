"""Running an exported .onnx model with ONNX Runtime, without importing torch.

The model file describes itself: classes, colours, normalisation and eval size live in its
metadata under the key "segtool", so `segtool predict --model model.onnx` needs nothing
else. Starting without torch keeps this path fast to start and small in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from segtool.data.processing import InputSpec, predict_maps, tiling_of
from segtool.errors import CheckpointError, MissingExtra

META_KEY = "segtool"


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Full graph optimisation folds BatchNorm into convs and fuses activations.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    return opts


class OnnxSegmenter:
    """images (HxWx3 uint8 RGB) -> class maps at each image's size, via ONNX Runtime."""

    def __init__(self, path: Path, threads: int | None = None, tile: bool | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingExtra("ONNX models need onnxruntime, which segtool installs; reinstall it: pip install segtool") from None
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model {path} not found; pass a .onnx file written by segtool export")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"model {path} cannot be loaded by ONNX Runtime ({str(e).splitlines()[0][:160]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise CheckpointError(f"{path} has no segtool metadata; export it with segtool export")
        self.meta: dict[str, Any] = json.loads(raw)
        self.input_name = self.session.get_inputs()[0].name
        self.eval_size = self.meta.get("eval_size")
        self.tiling = tiling_of(self.meta.get("tiling", {})).forced(tile)

    @property
    def colours(self) -> list[list[int]]:
        return [c["color"] for c in self.meta["classes"]]

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.meta["classes"]]

    @property
    def spec(self) -> InputSpec:
        m = self.meta
        size = tuple(self.eval_size) if self.eval_size else None
        return InputSpec(m["num_classes"], tuple(m["mean"]), tuple(m["std"]), size, self.tiling)  # type: ignore[arg-type]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image's HxW class map."""
        return [m.classes for m in predict_maps(images, self.logits, self.spec)]
