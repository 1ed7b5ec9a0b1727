"""The road-scene models shipped inside the package, by name: each as a PyTorch checkpoint
and as the ONNX file exported from it. Torch-free, so the default `segtool predict` and
`segtool evaluate` can choose the ONNX file without importing torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
# `camvid`, the fast one, is used when no model is named.
NAMES = {"builtin": "camvid", "camvid": "camvid", "camvid-large": "camvid-large"}


def builtin_name(spec: Path | str | None) -> str | None:
    """The built-in model `spec` names (None: the default), unless a file of that name exists."""
    if spec is None:
        return "camvid"
    name = str(spec)
    return NAMES[name] if name in NAMES and not Path(spec).exists() else None


def builtin_onnx(spec: Path | str | None) -> Path | None:
    """The ONNX file of the built-in model `spec` names, when it ships and ONNX Runtime is
    installed: the fast path (no torch to import) for a model nobody trained here."""
    name = builtin_name(spec)
    if name is None or importlib.util.find_spec("onnxruntime") is None:
        return None
    path = ASSETS / f"{name}.onnx"
    return path if path.is_file() else None


def onnx_instead(spec: Path | str | None, *, tta: bool = False, device: str = "auto") -> Path | None:
    """The built-in model's ONNX file to run in place of `spec`, unless the command asks
    for what only PyTorch does (test-time augmentation, a CUDA device)."""
    return None if tta or device == "cuda" else builtin_onnx(spec)
