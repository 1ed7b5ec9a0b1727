"""`segtool evaluate`'s choice of path: an ONNX file (or a built-in model, which ships as
one) is scored by evaluate_onnx without torch, a .pt checkpoint by evaluate_torch."""

from __future__ import annotations

from pathlib import Path

from segtool.builtin import builtin_name, onnx_instead
from segtool.config import SplitSpec
from segtool.errors import SegtoolError, require_train
from segtool.inference.backends import model_label, must_exist
from segtool.reporting.report import EvalReport


def evaluate_file(
    model: Path | None,
    data: SplitSpec | None,
    *,
    tta: bool = False,
    device: str = "auto",
    tile: bool | None = None,
    progress: bool = True,
) -> EvalReport:
    """The report of `model` (a .pt checkpoint, a .onnx file, a built-in model's name or
    None for the default) on `data` (None: the checkpoint's own val split). ONNX files,
    and the built-in models when ONNX Runtime is installed, are scored without torch."""
    if builtin_name(model) is not None and data is None:
        raise SegtoolError(
            "the built-in model has no val split on this machine; pass --data, e.g. --data path/to/camvid/val.txt"
        )
    model = onnx_instead(model, tta=tta, device=device) or model
    if model is not None and Path(model).suffix.lower() == ".onnx":
        if data is None:
            raise SegtoolError(f"{model} carries no val split; pass --data (a list file or an images/masks folder)")
        if tta or device == "cuda":
            raise SegtoolError(
                "--tta and --device cuda run PyTorch checkpoints only; ONNX models run on the CPU as exported"
            )
        from segtool.reporting.evaluate_onnx import evaluate_onnx  # no torch on this path, as for predict --model

        return evaluate_onnx(Path(model), data, progress=progress, tile=tile)
    must_exist(model)
    require_train(
        f"the PyTorch checkpoint {model_label(model)}" if builtin_name(model) is None else "--tta and --device cuda"
    )
    from segtool.models.checkpoint import resolve_checkpoint
    from segtool.reporting.evaluate_torch import evaluate_checkpoint

    return evaluate_checkpoint(resolve_checkpoint(model), data, progress=progress, tta=tta, device=device, tile=tile)
