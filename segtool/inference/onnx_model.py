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

from segtool.errors import CheckpointError, MissingExtra
from segtool.inference.processing import InputSpec, predict_maps, tiling_of

META_KEY = "segtool"


def onnx_data_config(meta: dict):
    """The data settings an exported model carries: its classes, and how `segtool evaluate`
    reads masks for it (files from before `masks` existed read index masks)."""
    from segtool.config import DataConfig

    return DataConfig.model_validate(
        {"classes": meta["classes"], "ignore_index": meta["ignore_index"], **meta.get("masks", {})}
    )


def _meta_problem(raw: str, outputs: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata, None), or (None, what is wrong with it): every key a run reads is checked
    here, with the same rules as a config (segtool.config.DataConfig), so a damaged or
    hand-edited file is refused when it is opened, not by a JSON or ONNX Runtime error
    mid-run (a tile of 0 pixels, an overlap as large as the tile, a colour of two numbers)."""
    from pydantic import ValidationError

    from segtool.config import DataConfig

    try:
        meta = json.loads(raw)
    except RecursionError:
        return None, "it is not JSON (nested too deeply)"
    except ValueError as e:  # JSONDecodeError, or a number too long to convert
        return None, f"it is not JSON ({getattr(e, 'msg', str(e))})"
    if not isinstance(meta, dict):
        return None, "it is not a JSON object"
    for key in ("masks", "tiling"):
        if not isinstance(meta.get(key, {}), dict):
            return None, f"'{key}' is not an object"
    for key in ("model", "val_metrics"):
        if not isinstance(meta.get(key) or {}, dict):
            return None, f"'{key}' is not an object"
    for key, value in (meta.get("val_metrics") or {}).items():  # segtool info prints them as percentages
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return None, f"'val_metrics.{key}' is {value!r}, not a number"
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        return None, "'classes' is not a list of {name, color} objects"
    num = meta.get("num_classes")
    if not isinstance(num, int) or isinstance(num, bool) or num != len(classes):
        return None, f"'num_classes' is {num!r} but 'classes' lists {len(classes)}"
    channels = outputs[0].shape[1] if outputs and len(outputs[0].shape) == 4 else None
    if isinstance(channels, int) and channels != num:
        return None, f"the network outputs {channels} classes but 'classes' lists {num}"
    tiling = {k: v for k, v in meta.get("tiling", {}).items() if k in ("tile_size", "tile_overlap", "tile_above")}
    fields = {k: meta[k] for k in ("classes", "ignore_index", "mean", "std", "eval_size") if k in meta}
    try:
        DataConfig.model_validate({**fields, **meta.get("masks", {}), **tiling})
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]]
        if loc and loc[0] in tiling:
            loc[0] = f"tiling.{loc[0]}"
        elif loc and loc[0] in meta.get("masks", {}):
            loc[0] = f"masks.{loc[0]}"
        key = ".".join(loc).replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        key = key or ("tiling" if "tile" in msg else "")  # the tile checks span keys: no single one to name
        return None, f"'{key}': {msg}" if key else msg
    if "ignore_index" not in meta:
        return None, "'ignore_index' is missing"
    return meta, None


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
            raise MissingExtra(
                "ONNX models need onnxruntime, which segtool installs; reinstall it: pip install segtool"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model {path} not found; pass a .onnx file written by segtool export")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(
                f"model {path} cannot be loaded by ONNX Runtime ({str(e).splitlines()[0][:160]})"
            ) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise CheckpointError(f"{path} has no segtool metadata; export it with segtool export")
        meta, problem = _meta_problem(raw, self.session.get_outputs())
        if meta is None:
            raise CheckpointError(
                f"{path}: its segtool metadata is damaged: {problem}; export it again with segtool export"
            )
        self.meta: dict[str, Any] = meta
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
