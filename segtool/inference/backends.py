"""Which backend runs a model for `segtool predict` (with what batches and how many
streams): chosen here from the model file and this machine, not in the CLI.

Torch-free: the ONNX Runtime path never imports torch (fast to start, small in memory);
the PyTorch backend is imported only when a .pt checkpoint is used.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from segtool.builtin import builtin_name, onnx_instead
from segtool.errors import CheckpointError, SegtoolError, require_train
from segtool.inference.outputs import Predictor

BACKENDS = ("auto", "torch", "onnx")


def must_exist(model: Path | str | None) -> None:
    """A named checkpoint that is not there is said to be missing before anything asks
    for torch to read it."""
    if model is not None and builtin_name(model) is None and not Path(model).exists():
        raise CheckpointError(
            f"checkpoint {model} not found; pass the path of a .pt file written by segtool train, "
            "a .onnx file from segtool export, or a built-in model's name (camvid, camvid-large)"
        )


def model_label(model: Path | str | None) -> str:
    """How predict names a model on its one line: a built-in name, or the file."""
    name = builtin_name(model)
    return f"{name} (built-in)" if name else str(model)


def open_predictor(
    model: Path | str | None,
    *,
    backend: str = "auto",
    tta: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    tile: bool | None = None,
) -> Predictor:
    """The predictor for `model` (a .pt checkpoint, a .onnx file, a built-in model's name,
    or None for the default built-in model). `backend` auto picks ONNX Runtime for .onnx
    files and for the built-in models (they ship as both), and PyTorch for checkpoints."""
    if backend not in BACKENDS:
        raise SegtoolError(f"--backend {backend}: use auto, torch or onnx")
    label = model_label(model)
    shipped = onnx_instead(model, tta=tta, device=device) if backend != "torch" else None
    if shipped is not None:  # a built-in model: its ONNX file gives the same masks without importing torch
        model = shipped
    if backend == "onnx" or (backend == "auto" and model is not None and Path(model).suffix.lower() == ".onnx"):
        if model is None or Path(model).suffix.lower() != ".onnx":
            raise SegtoolError(f"--backend onnx runs .onnx files; {model} is not one (segtool export writes one)")
        if tta:
            raise SegtoolError("--tta runs PyTorch checkpoints only; pass the .pt file instead of the .onnx model")
        if device == "cuda":
            raise SegtoolError(
                "--device cuda runs PyTorch checkpoints only; ONNX models run on the CPU (drop --device)"
            )
        from segtool.inference.onnx_model import OnnxSegmenter, onnx_data_config

        # One ORT thread per stream and one stream per core: on a 2-core CPU, folder
        # throughput is about 20% higher than one stream running two threads.
        # Batches of one keep ORT's buffers small: 200 MB peak RSS over CamVid val, 430 with 4.
        session = OnnxSegmenter(Path(model), threads=1, tile=tile)
        return Predictor(
            session.logits,
            session.spec,
            session.colours,
            session.names,
            batch_size or 1,
            os.cpu_count() or 1,
            model=label,
            backend="onnxruntime",
            device="cpu",
            meta=session.meta,
            data=onnx_data_config(session.meta),
        )
    must_exist(model)
    require_train(
        f"the PyTorch checkpoint {label}" if model is not None and builtin_name(model) is None else "--backend torch"
    )
    from segtool.inference.torch_backend import torch_model
    from segtool.models.checkpoint import resolve_checkpoint

    predictor = torch_model(resolve_checkpoint(model), tta=tta, device=device, tile=tile, batch_size=batch_size or 4)
    return replace(predictor, model=label)
