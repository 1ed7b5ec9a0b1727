"""Prediction over many files, whatever runs the model: gathering inputs, a pipeline that
overlaps reading, inference and writing, and the mask/overlay files themselves. What
happens to each image before and after the model is segtool.data.processing's job.

Torch-free on purpose: the ONNX Runtime path uses it without importing torch.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from segtool.data.io import IMAGE_EXTS, read_image
from segtool.data.processing import InputSpec, Maps, predict_maps
from segtool.errors import SegtoolError
from segtool.faults import fault_point
from segtool.fsutil import atomic_write_bytes

OVERLAY_ALPHA = 0.5

@dataclass(frozen=True)
class Predictor:
    """A model ready to predict (segtool.engine.backends.open_predictor makes one): `run`
    turns a stack of preprocessed inputs into logits, `spec` says how images become
    inputs and logits become maps (segtool.data.processing, the same for every backend);
    the class colours and names; how to feed it (images per call, calls in flight at
    once); and what it is, for the line predict prints."""

    run: Callable[[np.ndarray], np.ndarray]  # NCHW float32 -> NKhw float32 logits
    spec: InputSpec
    colours: list[list[int]]
    names: list[str]
    batch_size: int
    streams: int
    model: str = ""  # as the user named it: a built-in name or a file
    backend: str = ""  # onnxruntime or torch
    device: str = "cpu"
    meta: dict | None = None  # an exported model's metadata (None for a checkpoint)

    def predict_maps(self, images: list[np.ndarray], confidence: bool = False) -> list[Maps]:
        """Each image's class map (and confidence map), at the image's own size."""
        return predict_maps(images, self.run, self.spec, confidence)

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image's HxW uint8 class map."""
        return [m.classes for m in self.predict_maps(images)]

    def describe(self) -> str:
        """One line: which model, backend and device."""
        streams = f", {self.streams} streams" if self.streams > 1 else ""
        return f"model {self.model}, backend {self.backend}, device {self.device}{streams}"


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


MASK_SUFFIX, OVERLAY_SUFFIX, CONFIDENCE_SUFFIX = "_mask.png", "_overlay.jpg", "_confidence.png"
SOURCE_KEY = "segtool-source"  # PNG text chunk: the input a mask was made from


def _pattern_regex(pattern: str) -> re.Pattern:
    """A glob pattern as a regex over '/'-separated paths: `**/` any folders (none
    included), `*` and `?` within one name, `[...]` a character class."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:[^/]*/)*", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _glob(spec: str) -> list[Path]:
    """Files matching `spec`. Unlike glob.glob, `**` never descends into symlinked folders:
    one symlink loop would list the same images dozens of times, and two never end."""
    parts = Path(spec).parts
    fixed = next((k for k, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    regex = _pattern_regex("/".join(parts[fixed:]))
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        rel = Path(folder).relative_to(root)
        found += [Path(folder) / n for n in sorted(names) if regex.match((rel / n).as_posix())]
    return found


def _is_output(path: Path) -> bool:
    return path.name.endswith((MASK_SUFFIX, OVERLAY_SUFFIX, CONFIDENCE_SUFFIX))


def collect_inputs(specs: list[str], out_dir: Path | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by paths, folders (their images, sorted) and glob patterns. A
    folder or pattern never yields the masks and overlays in `out_dir`: a run must not
    read its own outputs as inputs."""
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    own = out_dir.resolve() if out_dir is not None else None

    def usable(f: Path) -> bool:
        mine = own is not None and f.parent.resolve() == own and _is_output(f)
        return f.is_file() and f.suffix.lower() in IMAGE_EXTS and not mine

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if usable(f))
            if not images:
                missing.append((spec, "folder holds no image files"))
            found += images
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(spec):
            expanded = _glob(spec) if "**" in spec else sorted(Path(m) for m in glob.glob(spec))
            matches = [m for m in expanded if usable(m)]
            if not matches:
                missing.append((spec, "pattern matches no image files"))
            found += matches
        else:
            missing.append((spec, "not found"))
    return list(dict.fromkeys(found)), missing


def png_bytes(img: Image.Image, source: Path | None = None) -> bytes:
    buf = io.BytesIO()
    info = PngInfo()
    if source is not None:
        info.add_text(SOURCE_KEY, str(source.resolve()))
    img.save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()


def mask_source(mask_path: Path) -> str | None:
    """The input a segtool mask was made from, as written into it; None when unknown."""
    try:
        with Image.open(mask_path) as m:
            return m.info.get(SOURCE_KEY)
    except (OSError, ValueError):
        return None


def colour_lut(colours: np.ndarray) -> np.ndarray:
    """A 256-entry table class index -> RGB for cv2.LUT (unlisted indices are black)."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[: len(colours), 0] = colours
    return lut


def draw_legend(picture: np.ndarray, pred: np.ndarray, lut: np.ndarray, names: Sequence[str]) -> None:
    """A swatch and the name of each class present in `pred`, most pixels first, in a dark
    box at the top left of `picture` (HxWx3 RGB, drawn in place), sized to the image."""
    counts = np.bincount(pred.ravel(), minlength=len(names))[: len(names)]
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    if not present:
        return
    h, w = picture.shape[:2]
    scale = max(0.3, min(h, w) / 700)
    thick = max(1, round(scale * 1.5))
    (_, th), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    row, pad = th + max(4, th // 2), max(3, th // 3)
    width = max(cv2.getTextSize(names[c], cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for c in present) + row + 3 * pad
    box = picture[: min(h, pad * 2 + row * len(present)), : min(w, width)]
    box[:] = (box * 0.35).astype(np.uint8)  # darken behind the text, so it reads on any image
    for i, c in enumerate(present):
        y = pad + i * row
        colour = tuple(int(v) for v in lut[c, 0])
        cv2.rectangle(picture, (pad, y + 2), (pad + row - 4, y + row - 2), colour, -1)
        cv2.putText(picture, names[c], (2 * pad + row, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def overlay_image(image: np.ndarray, pred: np.ndarray, lut: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
    """The image (HxWx3 RGB) with its class colours blended in, and a legend of the classes
    present when `names` are given."""
    colour = cv2.LUT(cv2.merge([pred, pred, pred]), lut)  # 10x faster than lut[pred]
    blended = cv2.addWeighted(image, 1 - OVERLAY_ALPHA, colour, OVERLAY_ALPHA, 0.0)  # uint8 all the way
    if names:
        draw_legend(blended, pred, lut, names)
    return blended


def confidence_png(confidence: np.ndarray) -> Image.Image:
    """The top-class probability as an 8-bit grey image: round(255 * p)."""
    return Image.fromarray(np.rint(np.clip(confidence, 0.0, 1.0) * 255).astype(np.uint8), mode="L")


def write_outputs(
    pred: np.ndarray,
    image: np.ndarray,
    lut: np.ndarray,
    mask_path: Path,
    overlay_path: Path | None,
    source: Path | None = None,
    legend: Sequence[str] | None = None,
    confidence: np.ndarray | None = None,
    confidence_path: Path | None = None,
) -> None:
    """The palette mask (recording `source`, the input it was made from), the overlay,
    with a legend of the classes present when `legend` gives the class names, and the
    confidence map when `confidence_path` is given."""
    mask = Image.fromarray(pred.astype(np.uint8))  # "L"; putpalette turns it into "P"
    mask.putpalette(lut.flatten().tolist())
    atomic_write_bytes(mask_path, png_bytes(mask, source))
    if confidence_path is not None and confidence is not None:
        atomic_write_bytes(confidence_path, png_bytes(confidence_png(confidence), source))
    if overlay_path is None:
        return
    blended = overlay_image(image, pred, lut, legend)
    # The overlay is a picture for people: JPEG encodes a 360x480 blend in about 1 ms
    # where PNG took about 25, and makes a file 5x smaller. The mask stays lossless.
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise SegtoolError(f"cannot encode {overlay_path}")
    atomic_write_bytes(overlay_path, encoded.tobytes())


def output_names(paths: list[Path]) -> list[str]:
    """One output name per input, never two alike. A stem is used alone while it is
    unique; inputs that share one get their extension added, then as many parent folders
    as it takes (same/img.png and same/img.jpg: img_png, img_jpg)."""

    def name(p: Path, level: int) -> str:
        if level == 0:
            return p.stem
        ext = p.suffix[1:] or "noext"
        folders = p.resolve().parent.parts[1:][-(level - 1) :] if level > 1 else ()
        return "_".join([*folders, p.stem, ext])

    levels = [0] * len(paths)
    while True:
        names = [name(p, lv) for p, lv in zip(paths, levels)]
        counts = Counter(names)
        clashes = [i for i, n in enumerate(names) if counts[n] > 1]
        if not clashes:
            return names
        for i in clashes:
            if levels[i] > len(paths[i].resolve().parts):  # every folder used and still alike
                return [f"{n}_{k}" for k, n in enumerate(names)]
            levels[i] += 1


def _read(path: Path) -> np.ndarray | SegtoolError:
    try:
        return read_image(path)
    except SegtoolError as e:
        return e


def predict_files(
    inputs: list[str],
    out_dir: Path,
    predictor: Predictor,
    *,
    overwrite: bool = False,
    progress: bool = True,
    overlays: bool = True,
    legend: bool = True,
    confidence: bool = False,
) -> PredictResult:
    """Masks (and overlays, unless `overlays` is False, and confidence maps with
    `confidence`) for every readable input; unreadable ones are reported, not fatal.

    Reading the next batches and writing the last ones run in threads while the model
    works on the current one (decoding and encoding release the GIL). With
    `predictor.streams` > 1, that many batches run through the model at once: for an ONNX
    Runtime session of one thread per stream, which keeps every core busy without
    intra-op synchronisation.
    """
    batch_size, streams = predictor.batch_size, predictor.streams
    files, missing = collect_inputs(inputs, out_dir)
    result = PredictResult(failed=list(missing))
    if not files:
        return result
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegtoolError(f"cannot create output folder {out_dir} ({e.strerror}); choose another --out") from None
    lut = colour_lut(np.asarray(predictor.colours, dtype=np.uint8))
    todo = []
    for path, name in zip(files, output_names(files)):
        targets = (out_dir / f"{name}{MASK_SUFFIX}", out_dir / f"{name}{OVERLAY_SUFFIX}" if overlays else None,
                   out_dir / f"{name}{CONFIDENCE_SUFFIX}" if confidence else None)  # fmt: skip
        made_from = mask_source(targets[0]) if not overwrite and targets[0].exists() else None
        if made_from is not None and made_from != str(path.resolve()):
            result.failed.append((str(path), f"{targets[0]} was made from {made_from}; pass --overwrite to replace it or choose another --out"))
        elif not overwrite and all(t.exists() for t in targets if t):
            result.skipped.append(path)
        else:
            todo.append((path, targets))
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress)
    ahead = streams + 1  # chunks being read while the model works

    def read(chunk: list) -> list:
        return [_read(p) for p, _ in chunk]

    names = predictor.names if legend else None

    def finish(good: list, preds: Future) -> None:
        for (path, (mask_path, overlay_path, conf_path), image), maps in zip(good, preds.result()):
            pending.append(writers.submit(write_outputs, maps.classes, image, lut, mask_path, overlay_path, path, names,
                                          maps.confidence, conf_path))  # fmt: skip
            result.written.append(mask_path)
            bar.update(1)

    with ThreadPoolExecutor(2) as readers, ThreadPoolExecutor(2) as writers, ThreadPoolExecutor(streams) as models:
        pending: list[Future] = []
        running: deque[tuple[list, Future]] = deque()
        loaded = [readers.submit(read, c) for c in chunks[:ahead]]
        for i, chunk in enumerate(chunks):
            fault_point("predict")
            images = loaded[i].result()
            if i + ahead < len(chunks):
                loaded.append(readers.submit(read, chunks[i + ahead]))
            loaded[i] = None  # type: ignore[call-overload]  # free the decoded images once handed on
            good = []
            for (path, targets), image in zip(chunk, images):
                if isinstance(image, SegtoolError):
                    result.failed.append((str(path), image.one_line()))
                    bar.update(1)
                else:
                    good.append((path, targets, image))
            if good:
                running.append((good, models.submit(predictor.predict_maps, [img for _, _, img in good], confidence)))
            while len(running) > streams:  # one batch queued behind the running ones: no idle stream
                finish(*running.popleft())
        while running:
            finish(*running.popleft())
        for f in pending:
            f.result()  # a write error (disk full, ...) surfaces here as a SegtoolError
    bar.close()
    return result
