"""segtool's Python API, and the one path the `segtool` command calls.

    import segtool
    model = segtool.load("camvid")             # a built-in name, a .pt or a .onnx file
    result = model.predict("street.png")       # a path, a PIL image or an HxWx3 uint8 array
    result.mask, result.confidence             # HxW class ids, HxW top-class probability
    report = model.evaluate("data/val.txt")    # what `segtool evaluate --json` writes
    run = segtool.train("configs/x.yaml", overrides={"train.epochs": 3}, out="runs/x")
    segtool.export(run.best, "model.onnx", int8=True, calibration="data/train.txt")

Importing this module loads no torch: ONNX models and the built-in models predict and
evaluate with ONNX Runtime alone. Training, export and .pt checkpoints need the train
extra (`pip install "segtool[train]"`) and say so when it is missing. Every error a user
can cause is a SegtoolError subclass carrying the one-line message the CLI prints.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import numpy as np

from segtool.errors import CheckpointError, ConfigError, DataError, SegtoolError, require_train

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image as PILImage

    from segtool.inference.outputs import Predictor, PredictResult
    from segtool.reporting.report import EvalReport
    from segtool.training.export import ExportReport

ImageInput = Union[str, "os.PathLike[str]", "PILImage.Image", np.ndarray]


class ClassInfo(NamedTuple):
    """One class a model predicts: its name and display colour (RGB)."""

    name: str
    color: tuple[int, int, int]


@dataclass
class Prediction:
    """One image's prediction, at the image's own size."""

    mask: np.ndarray  # HxW uint8 class ids
    confidence: np.ndarray | None  # HxW float32, the top class's probability (None when not asked for)
    image: np.ndarray = field(repr=False)  # HxWx3 uint8 RGB, as the model saw it
    classes: tuple[ClassInfo, ...] = field(repr=False)
    source: Path | None = None  # the file it came from, when it came from one

    def overlay(self, legend: bool = True) -> np.ndarray:
        """The image (HxWx3 uint8 RGB) with its class colours blended in, and a legend of
        the classes present unless `legend` is False: what `segtool predict` writes."""
        from segtool.inference.outputs import colour_lut, overlay_image

        lut = colour_lut(np.asarray([c.color for c in self.classes], np.uint8))
        return overlay_image(self.image, self.mask, lut, [c.name for c in self.classes] if legend else None)

    def shares(self) -> dict[str, float]:
        """Each class's share of the image's pixels (classes absent included, at 0)."""
        counts = np.bincount(self.mask.ravel(), minlength=len(self.classes))[: len(self.classes)]
        return {c.name: float(n) / self.mask.size for c, n in zip(self.classes, counts)}

    def save(
        self, out: str | os.PathLike[str], name: str | None = None, *, overlay: bool = True, legend: bool = True
    ) -> list[Path]:
        """Write `<name>_mask.png` (palette PNG of class ids), `<name>_overlay.jpg` unless
        `overlay` is False, and `<name>_confidence.png` (8-bit, 255 = certain) when the
        confidence was computed, into the folder `out`: the same bytes `segtool predict`
        writes for the same input. `name` defaults to the source file's stem."""
        from segtool.inference.outputs import CONFIDENCE_SUFFIX, MASK_SUFFIX, OVERLAY_SUFFIX, colour_lut, write_outputs

        stem = name or (self.source.stem if self.source is not None else None)
        if not stem:
            raise SegtoolError("this prediction came from an array or PIL image, not a file: pass save(out, name=...)")
        folder = Path(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SegtoolError(f"cannot create output folder {folder} ({e.strerror}); choose another folder") from None
        lut = colour_lut(np.asarray([c.color for c in self.classes], np.uint8))
        mask_path = folder / f"{stem}{MASK_SUFFIX}"
        overlay_path = folder / f"{stem}{OVERLAY_SUFFIX}" if overlay else None
        conf_path = folder / f"{stem}{CONFIDENCE_SUFFIX}" if self.confidence is not None else None
        names = [c.name for c in self.classes] if legend else None
        write_outputs(
            self.mask, self.image, lut, mask_path, overlay_path, self.source, names, self.confidence, conf_path
        )
        return [p for p in (mask_path, overlay_path, conf_path) if p is not None]


@dataclass(frozen=True)
class Run:
    """A finished (or resumed to its end) training run."""

    dir: Path
    best: Path  # best.pt: the checkpoint with the best val mIoU
    last: Path  # last.pt
    epochs: int
    best_miou: float  # a fraction, 0..1
    seconds: float


class Model:
    """A model ready to predict and evaluate; `segtool.load` makes one.

    The predictor (an ONNX Runtime session, or the PyTorch network) is opened on first
    use, so a Model that only evaluates never loads a second copy."""

    def __init__(
        self,
        spec: str | Path | None,
        *,
        backend: str = "auto",
        device: str = "auto",
        tta: bool = False,
        tile: bool | None = None,
        batch_size: int | None = None,
    ):
        self.spec = spec
        self.backend = backend
        self.device = device
        self.tta = tta
        self.tile = tile
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"segtool.Model({self.spec if self.spec is not None else 'camvid'!s}, backend={self.backend!r})"

    @cached_property
    def predictor(self) -> Predictor:
        """The inference-level predictor (segtool.inference.outputs.Predictor)."""
        from segtool.inference.backends import open_predictor

        return open_predictor(
            self.spec,
            backend=self.backend,
            tta=self.tta,
            device=self.device,
            batch_size=self.batch_size,
            tile=self.tile,
        )

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The classes the model predicts, in class-id order."""
        p = self.predictor
        return tuple(ClassInfo(n, tuple(int(v) for v in c)) for n, c in zip(p.names, p.colours))  # type: ignore[misc]

    def describe(self) -> str:
        """One line: which model, backend and device."""
        return self.predictor.describe()

    def predict(
        self, inputs: ImageInput | Iterable[ImageInput], *, confidence: bool = True
    ) -> Prediction | Iterator[Prediction]:
        """Predict one image, or stream many.

        One image (a file path, a PIL image, or an HxWx3 uint8 RGB array) gives a
        Prediction. A folder, a glob pattern, or any other iterable of images gives an
        iterator of Predictions in input order, computed a batch at a time as it is
        consumed, so memory does not grow with the number of inputs. `confidence` also
        computes each pixel's top-class probability (a few per cent more time)."""
        if isinstance(inputs, (bytes, bytearray)) or not (
            isinstance(inputs, (str, os.PathLike)) or _is_single(inputs) or hasattr(inputs, "__iter__")
        ):
            raise DataError(
                f"cannot predict a {type(inputs).__name__}: pass a file path, a PIL image or an HxWx3 uint8 array, "
                "or an iterable of them"
            )
        if _is_single(inputs):
            return next(self._stream([inputs], confidence))
        if isinstance(inputs, (str, os.PathLike)):
            from segtool.inference.outputs import collect_inputs

            files, missing = collect_inputs([str(inputs)])
            if missing:
                raise DataError(f"{missing[0][0]}: {missing[0][1]}")
            inputs = files
        return self._stream(inputs, confidence)  # type: ignore[arg-type]

    def _stream(self, inputs: Iterable[ImageInput], confidence: bool) -> Iterator[Prediction]:
        p = self.predictor
        classes = self.classes
        items = (_as_rgb(x) for x in inputs)
        with ThreadPoolExecutor(p.streams) as pool:
            running: deque = deque()
            while chunk := list(islice(items, p.batch_size)):
                running.append((chunk, pool.submit(p.predict_maps, [img for img, _ in chunk], confidence)))
                while len(running) > p.streams:  # as many batches in flight as the predictor has streams
                    yield from _predictions(*running.popleft(), classes)
            while running:
                yield from _predictions(*running.popleft(), classes)

    def predict_files(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        overlays: bool = True,
        legend: bool = True,
        confidence: bool = False,
        progress: bool = False,
    ) -> PredictResult:
        """Masks (and overlays, and confidence maps) for image files, folders and glob
        patterns, written into `out` as `segtool predict` writes them; existing outputs are
        skipped unless `overwrite`. Unreadable inputs are listed in the result's `failed`."""
        from segtool.inference.outputs import predict_files

        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) for i in inputs):
            raise DataError("predict_files takes a list of image files, folders or glob patterns")
        return predict_files(
            [str(i) for i in inputs],
            Path(out),
            self.predictor,
            overwrite=overwrite,
            progress=progress,
            overlays=overlays,
            legend=legend,
            confidence=confidence,
        )

    def report(self, data: str | os.PathLike[str] | None = None, *, progress: bool = False) -> EvalReport:
        """The evaluation report on `data` (a list file, or a folder with images/ and masks/;
        None: a checkpoint's own val split), with per-image scores and unreadable pairs."""
        from segtool.config import parse_split
        from segtool.reporting.evaluate import evaluate_file

        split = parse_split(str(data)) if data is not None else None
        return evaluate_file(self.spec, split, tta=self.tta, device=self.device, tile=self.tile, progress=progress)

    def evaluate(self, data: str | os.PathLike[str] | None = None, *, progress: bool = False) -> dict[str, Any]:
        """Per-class IoU, accuracy and Dice, mIoU, pixel accuracy and the confusion matrix
        over the whole split: the same dictionary `segtool evaluate --json` writes."""
        return self.report(data, progress=progress).to_dict()


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    tta: bool = False,
    tile: bool | None = None,
    batch_size: int | None = None,
) -> Model:
    """A model by a built-in name (`camvid`, the default, or `camvid-large`), or a `.pt`
    checkpoint from `segtool.train` / `.onnx` file from `segtool.export`.

    `backend` auto runs .onnx files and the built-in models with ONNX Runtime (no torch)
    and checkpoints with PyTorch; `device` (auto, cpu, cuda) and `tta` apply to PyTorch.
    A missing file, or a checkpoint without the train extra installed, raises here."""
    from segtool.builtin import builtin_name
    from segtool.inference.backends import BACKENDS

    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ConfigError(
            f"cannot load a {type(model).__name__}: pass a built-in name (camvid, camvid-large), or a .pt or .onnx path"
        )
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: use a positive number of images per call, or None")
    spec = None if model is None else (str(model) if isinstance(model, str) else Path(model))
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "torch" or tta or device == "cuda":
        require_train(f"backend {backend}" if backend == "torch" else "tta" if tta else "device cuda")
    if spec is not None and builtin_name(spec) is None:
        path = Path(spec)
        onnx = path.suffix.lower() == ".onnx"
        if onnx and (tta or device == "cuda" or backend == "torch"):
            raise ConfigError(
                f"{'--tta' if tta else '--device cuda' if device == 'cuda' else '--backend torch'} runs PyTorch "
                "checkpoints only; pass the .pt file instead of the .onnx model"
            )
        if not path.exists():
            if onnx:
                raise CheckpointError(f"model {path} not found; pass a .onnx file written by segtool export")
            raise CheckpointError(
                f"checkpoint {path} not found; pass the path of a .pt file written by segtool train, "
                "a .onnx file from segtool export, or a built-in model's name (camvid, camvid-large)"
            )
        if not onnx and backend != "onnx":
            require_train(f"the PyTorch checkpoint {path}")
    return Model(spec, backend=backend, device=device, tta=tta, tile=tile, batch_size=batch_size)


def train(
    config: str | os.PathLike[str],
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> Run:
    """Train the YAML config `config` into `out` (default: <train.out_dir>/<name>), as
    `segtool train` does; `overrides` are config keys to set ({"train.epochs": 3}, or
    ["train.epochs=3"]). `resume` continues the run in `out` from its last.pt."""
    require_train("training")
    from segtool.config import load_config
    from segtool.training.loop import train as run_train

    cfg = load_config(Path(config), _override_list(overrides))
    out_dir = Path(out) if out is not None else cfg.train.out_dir / cfg.name
    result = run_train(cfg, out_dir, resume=resume, progress=progress)
    return Run(out_dir, out_dir / "best.pt", out_dir / "last.pt", result.epochs, result.best_miou, result.seconds)


def export(
    model: str | os.PathLike[str] | Run | None,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    format: str = "onnx",
    device: str = "auto",
) -> ExportReport:
    """Export a checkpoint (a .pt file, a Run, a built-in name, or None for the default
    built-in model) to `out`: ONNX (int8 with `int8`, calibrated on the images of the split
    `calibration`) or TorchScript. The file is kept only when it matches PyTorch on `data`
    (default: the checkpoint's val split); returns what the checks measured."""
    require_train("export")
    from segtool.config import parse_split
    from segtool.models.checkpoint import resolve_checkpoint
    from segtool.training.export import export_model

    source = model.best if isinstance(model, Run) else model
    return export_model(
        resolve_checkpoint(source),
        Path(out),
        fmt=format,
        int8=int8,
        device=device,
        calibration=parse_split(str(calibration)) if calibration is not None else None,
        data=parse_split(str(data)) if data is not None else None,
    )


def _override_list(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """{"train.epochs": 3} -> ["train.epochs=3"]; values are written as YAML, so lists and
    strings arrive as the config file would give them."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        import yaml

        return [
            f"{k}={yaml.safe_dump(v, default_flow_style=True, width=1 << 20).strip().removesuffix('...').strip()}"
            for k, v in overrides.items()
        ]
    if isinstance(overrides, str):
        return [overrides]
    return [str(o) for o in overrides]


def _is_single(x: Any) -> bool:
    if isinstance(x, np.ndarray) or _is_pil(x):
        return True
    if isinstance(x, (str, os.PathLike)):
        return not (Path(x).is_dir() or (not Path(x).exists() and glob.has_magic(str(x))))
    return False


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.")


def _as_rgb(x: ImageInput) -> tuple[np.ndarray, Path | None]:
    """An input as the HxWx3 uint8 RGB array the model sees, and its file when it has one."""
    if isinstance(x, (str, os.PathLike)):
        from segtool.data.io import read_image

        return read_image(Path(x)), Path(x)
    if _is_pil(x):
        from PIL import ImageOps

        img = ImageOps.exif_transpose(x)  # type: ignore[arg-type]
        if min(img.size) == 0:
            raise DataError(f"an image must be at least 1x1 pixels; this PIL image is {img.size[0]}x{img.size[1]}")
        if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # scaled by bit depth, as files are
            from segtool.data.io import to_8bit

            arr = np.asarray(img)
            if img.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
                arr = arr.astype(np.uint16)  # Pillow opens some 16-bit files as 32-bit "I"
            grey = to_8bit(arr, Path("<PIL image>"))
            return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), None
        return np.asarray(img.convert("RGB")), None
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] in (3, 4) and min(x.shape[:2]) > 0:
            return np.ascontiguousarray(x[..., :3]), None
        if x.dtype == np.uint8 and x.ndim == 2 and min(x.shape) > 0:
            return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=2)), None
        raise DataError(
            f"an image array must be HxWx3 uint8 RGB (or HxW grey); got shape {x.shape} and dtype {x.dtype}"
        )
    raise DataError(f"cannot predict a {type(x).__name__}: pass a file path, a PIL image or an HxWx3 uint8 array")


def _predictions(
    chunk: list[tuple[np.ndarray, Path | None]], maps, classes: tuple[ClassInfo, ...]
) -> Iterator[Prediction]:
    for (image, source), m in zip(chunk, maps.result()):
        yield Prediction(m.classes, m.confidence, image, classes, source)
