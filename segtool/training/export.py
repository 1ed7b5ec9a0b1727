"""Export a checkpoint to ONNX (fp32 or int8) or TorchScript, checked before it is kept.

The exported file carries segtool's metadata (classes, colours, normalisation, eval size),
accepts any batch, height and width, and is only moved into place after a parity check on
real images: argmax agreement with PyTorch >= 99.9% (fp32), and for int8 no more than 1.0
mIoU lost on the evaluation split.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtool import __version__
from segtool.config import Config, SplitSpec
from segtool.data.io import read_image
from segtool.data.pairs import config_split, find_pairs
from segtool.errors import SegtoolError
from segtool.inference.onnx_model import META_KEY, OnnxSegmenter
from segtool.inference.processing import preprocess
from segtool.metrics import summarize
from segtool.models.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from segtool.models.device import pick_device

MIN_AGREEMENT = 0.999
MAX_INT8_MIOU_LOSS = 0.01
PARITY_IMAGES = 8
CALIBRATION_IMAGES = 64


@dataclass
class Parity:
    """The exported model against PyTorch on `images` real images."""

    max_abs_diff: float
    agreement: float  # share of pixels whose arg-max class agrees
    images: int


@dataclass
class Int8Check:
    miou_fp32: float
    miou_int8: float
    calibration_images: int


@dataclass
class ExportReport:
    """What `export_model` wrote and what its checks measured."""

    format: str
    path: Path
    parity: Parity
    size_mb: float
    int8: Int8Check | None = None


def metadata(cfg: Config, ckpt: dict[str, Any], precision: str) -> dict[str, Any]:
    d = cfg.data
    return {
        "format": "segtool-model",
        "segtool_version": __version__,
        "precision": precision,
        "classes": [
            {"name": c.name, "color": list(c.color), **({"value": c.value} if c.value is not None else {})}
            for c in d.classes
        ],
        # How masks are read: `segtool evaluate model.onnx` decodes them as training did.
        "masks": {
            "mask_format": d.mask_format,
            "ignore_values": list(d.ignore_values),
            "ignore_colors": [list(c) for c in d.ignore_colors],
            "reduce_zero_label": d.reduce_zero_label,
        },
        "num_classes": d.num_classes,
        "ignore_index": d.ignore_index,
        "mean": list(d.mean),
        "std": list(d.std),
        "eval_size": list(d.eval_size) if d.eval_size else None,
        "tiling": {"tile_size": list(d.tile_size), "tile_overlap": d.tile_overlap, "tile_above": d.tile_above},
        "input": "image: float32 NCHW RGB, (pixel / 255 - mean) / std, any batch, height and width",
        "output": "logits: float32 NCHW at the input's height and width",
        "output_stride": cfg.model.output_stride,
        "model": cfg.model.model_dump(mode="json"),
        "val_metrics": {k: ckpt["metrics"].get(k) for k in ("miou", "pixel_accuracy")} if ckpt.get("metrics") else None,
    }


def _spread(pairs: list[tuple[Path, Path]], n: int) -> list[Path]:
    """The images of `n` pairs spread evenly through the split (all of them when fewer)."""
    return [img for img, _ in pairs[:: max(1, len(pairs) // n)][:n]]


def _input(cfg: Config, image: Path) -> np.ndarray:
    """One image as the 1x3xhxw model input."""
    d = cfg.data
    return preprocess(read_image(image), d.mean, d.std, d.eval_size)[None]


def _inputs(cfg: Config, pairs: list[tuple[Path, Path]], n: int) -> list[np.ndarray]:
    return [_input(cfg, img) for img in _spread(pairs, n)]


def _onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


def _set_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, str(path))


def _parity(reference: torch.nn.Module, run, inputs: list[np.ndarray], device: torch.device) -> Parity:
    """Max |logit difference| and argmax agreement of `run` against the PyTorch model."""
    diff, agree, total = 0.0, 0, 0
    with torch.inference_mode():
        for x in inputs:
            ref = reference(torch.from_numpy(x).to(device)).float().cpu().numpy()
            out = run(x)
            diff = max(diff, float(np.abs(ref - out).max()))
            agree += int((ref.argmax(1) == out.argmax(1)).sum())
            total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    return Parity(max_abs_diff=diff, agreement=agree / total, images=len(inputs))


def _onnx_miou(path: Path, cfg: Config, pairs: list[tuple[Path, Path]]) -> float:
    """The mIoU of an exported file on `pairs`, scored as `segtool evaluate` scores it."""
    from segtool.inference.backends import open_predictor
    from segtool.reporting.evaluate import score_split

    scores = score_split(open_predictor(path, backend="onnx"), pairs, cfg.data, progress=False)
    return summarize(scores.confusion, [c.name for c in cfg.data.classes])["miou"] or 0.0


class _CalibrationImages:
    """The calibration inputs, read one at a time as ONNX Runtime's calibrator asks for
    them: never all in memory at once. `set_range` is how quantize_static feeds the
    calibrator a few images per pass (its CalibStridedMinMax option, which works for
    every calibration method), so the activations it keeps are those of a few images, not
    of all of them: 64 built-in-model images at 360x480 peaked at 10 GB before."""

    def __init__(self, cfg: Config, images: list[Path]):
        self.cfg, self.images = cfg, images
        self.todo: Iterator[Path] = iter(images)

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.todo = iter(self.images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self.todo, None)
        if path is None:
            return None
        return {"image": _input(self.cfg, path)}


CALIBRATION_STRIDE = 4  # images per calibration pass: peak memory grows with it, speed barely


def _quantize(fp32: Path, out: Path, tmp: Path, calib: _CalibrationImages) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
    # The stem sees raw normalised pixels and the classifiers make the final decision: the
    # three layers where 8-bit rounding costs the most accuracy for the least time saved.
    keep_fp32 = convs[:1] + convs[-2:]
    # A stride that divides the image count (quantize_static insists), at most CALIBRATION_STRIDE.
    stride = max(k for k in range(1, CALIBRATION_STRIDE + 1) if len(calib) % k == 0)
    # Activation ranges from the 99.999th percentile of a histogram instead of min/max: one
    # outlier pixel no longer stretches a layer's 256 levels. On the built-in CamVid model
    # int8 lost 1.10 mIoU with min/max (export refused) and 0.09 with the percentile.
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its histogram settings
        quantize_static(
            str(pre),
            str(out),
            calib,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_fp32,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.999, "CalibStridedMinMax": stride},
        )


def _write_fp32(
    fmt: str, model, reference, cfg: Config, ckpt: dict[str, Any], inputs, tmp: Path, where
) -> tuple[Path, Parity]:
    """The fp32 file in `tmp`, and its parity with the PyTorch `reference`; raises when the
    arg-max classes agree on less than MIN_AGREEMENT of the pixels."""
    example = torch.from_numpy(inputs[0])
    if fmt == "torchscript":
        path = tmp / "model.pt"
        with warnings.catch_warnings():  # tracing and jit's deprecation notices are not the user's business
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(path), _extra_files={"segtool.json": json.dumps(metadata(cfg, ckpt, "fp32"))})
            loaded = torch.jit.load(str(path))
        parity = _parity(reference, lambda x: loaded(torch.from_numpy(x)).numpy(), inputs, where)
    else:
        path = tmp / "model.onnx"
        _onnx_export(model, example, path)
        _set_metadata(path, metadata(cfg, ckpt, "fp32"))
        parity = _parity(reference, OnnxSegmenter(path).logits, inputs, where)
    if parity.agreement < MIN_AGREEMENT:
        raise SegtoolError(
            f"export parity check failed: argmax agreement {100 * parity.agreement:.3f}% < "
            f"{100 * MIN_AGREEMENT:.1f}% (max |logit diff| {parity.max_abs_diff:.2e}); nothing written"
        )
    return path, parity


def _write_int8(
    fp32: Path, cfg: Config, ckpt: dict[str, Any], calib_split: SplitSpec, eval_split: SplitSpec, tmp: Path
) -> tuple[Path, Int8Check]:
    """The int8 file in `tmp`, calibrated on `calib_split`; raises when it loses more than
    MAX_INT8_MIOU_LOSS mIoU against the fp32 file on `eval_split`."""
    pairs = find_pairs(calib_split, "calibration")
    calib = _CalibrationImages(cfg, _spread(pairs, CALIBRATION_IMAGES))
    q = tmp / "model.int8.onnx"
    _quantize(fp32, q, tmp, calib)
    _set_metadata(q, metadata(cfg, ckpt, "int8"))
    eval_pairs = find_pairs(eval_split, "evaluation")
    check = Int8Check(_onnx_miou(fp32, cfg, eval_pairs), _onnx_miou(q, cfg, eval_pairs), len(calib))
    if check.miou_fp32 - check.miou_int8 > MAX_INT8_MIOU_LOSS:
        raise SegtoolError(
            f"int8 model loses {100 * (check.miou_fp32 - check.miou_int8):.2f} mIoU points "
            f"(fp32 {100 * check.miou_fp32:.2f}, "
            f"int8 {100 * check.miou_int8:.2f}) on {eval_split.describe()}; more than 1.0 allowed; nothing written"
        )
    return q, check


def _scratch_beside(out: Path) -> Path:
    """A private folder next to `out`, so the finished file is moved into place in one step."""
    if out.is_dir():
        raise SegtoolError(f"--out {out} is a folder; name the file to write, e.g. --out {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise SegtoolError(f"cannot write into {out.parent} ({e.strerror}); choose another --out") from None


def export_model(
    checkpoint: Path,
    out: Path,
    *,
    fmt: str = "onnx",
    int8: bool = False,
    calibration: SplitSpec | None = None,
    data: SplitSpec | None = None,
    device: str = "auto",
) -> ExportReport:
    """Write `out`, or raise and leave nothing behind. Returns what the checks measured.
    The PyTorch model that is checked against runs on `device` (auto, cpu or cuda), chosen
    here; the file is traced from a CPU copy and runs anywhere."""
    if fmt not in ("onnx", "torchscript"):
        raise SegtoolError(f"--format {fmt} is not supported; use onnx or torchscript")
    if int8 and fmt != "onnx":
        raise SegtoolError("--int8 needs --format onnx")
    suffixes = (".onnx",) if fmt == "onnx" else (".pt", ".ts")
    # predict and info choose how to read a file by its suffix (a folder gets its own message below)
    if Path(out).suffix.lower() not in suffixes and not Path(out).is_dir():
        raise SegtoolError(
            f"--out {out}: a {fmt} export is written to a {' or '.join(suffixes)} file, which predict and info "
            f"recognise; name it e.g. {Path(out).with_suffix(suffixes[0])}"
        )
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt, checkpoint)
    where = pick_device(device, "--device")
    model = model_from_checkpoint(ckpt, cfg, checkpoint).eval()
    reference = copy.deepcopy(model).to(where) if where.type != "cpu" else model
    eval_split = (
        data
        or (cfg.data.val and config_split(cfg.data, "val"))
        or (cfg.data.synthetic and config_split(cfg.data, "val"))
    )
    if not eval_split:
        raise SegtoolError("no images to check the export on; pass --data (a list file or images/masks folder)")
    inputs = _inputs(cfg, find_pairs(eval_split, "evaluation"), PARITY_IMAGES)
    out = Path(out)
    tmp = _scratch_beside(out)
    try:
        path, parity = _write_fp32(fmt, model, reference, cfg, ckpt, inputs, tmp, where)
        check = None
        if int8:
            calib_split = calibration or (cfg.data.train and config_split(cfg.data, "train")) or eval_split
            path, check = _write_int8(path, cfg, ckpt, calib_split, eval_split, tmp)
        os.replace(path, out)
    except OSError as e:  # a full disk, a folder made read-only meanwhile, ...
        raise SegtoolError(
            f"cannot write {out} ({e.strerror or e}); nothing written, the previous file (if any) is intact"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(format=fmt, path=out, parity=parity, size_mb=out.stat().st_size / 1e6, int8=check)
