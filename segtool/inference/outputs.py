"""Prediction over many files, whatever runs the model: gathering inputs, a pipeline that
overlaps reading, inference and writing, and the mask/overlay files themselves. What
happens to each image before and after the model is segtool.inference.processing's job.

Torch-free on purpose: the ONNX Runtime path uses it without importing torch.
"""

from __future__ import annotations

import glob
import io
import os
import re
import struct
import sys
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from segtool.config import DataConfig
from segtool.data.io import IMAGE_EXTS, max_pixels, read_image
from segtool.errors import SegtoolError
from segtool.faults import fault_point
from segtool.fsutil import NAME_ERRNOS, WriteError, atomic_write_bytes, name_too_long, printable
from segtool.inference.processing import InputSpec, Maps, predict_maps

OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class Predictor:
    """A model ready to predict (segtool.inference.backends.open_predictor makes one): `run`
    turns a stack of preprocessed inputs into logits, `spec` says how images become
    inputs and logits become maps (segtool.inference.processing, the same for every backend);
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
    data: DataConfig | None = None  # the classes, and how its masks are read (evaluation)

    def predict_maps(
        self, images: list[np.ndarray], confidence: bool = False, offsets: Sequence[np.ndarray] = ()
    ) -> list[Maps]:
        """Each image's class map (and confidence map), at the image's own size; with
        `offsets`, also the class maps of calibration's candidate logit offsets."""
        return predict_maps(images, self.run, self.spec, confidence, offsets)

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image's HxW uint8 class map."""
        return [m.classes for m in self.predict_maps(images)]

    def describe(self) -> str:
        """One line: which model, backend and device."""
        streams = f", {self.streams} streams" if self.streams > 1 else ""
        return f"model {self.model}, backend {self.backend}, device {self.device}{streams}"


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)  # masks on disk (their overlays too)
    skipped: list[Path] = field(default_factory=list)  # inputs whose outputs were there
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, why), printable
    ignored: list[Path] = field(default_factory=list)  # files in a folder or pattern not read as images
    notes: list[str] = field(default_factory=list)  # one line per kind of ignored file, as printed


MASK_SUFFIX, OVERLAY_SUFFIX, CONFIDENCE_SUFFIX = "_mask.png", "_overlay.jpg", "_confidence.png"
SOURCE_KEY = "segtool-source"  # PNG text chunk: the input a mask was made from
JPEG_SOURCE = b"segtool-source: "  # JPEG comment (COM) of an overlay: the same record
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


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


def _output_stem(path: Path) -> str:
    for suffix in (MASK_SUFFIX, OVERLAY_SUFFIX, CONFIDENCE_SUFFIX):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


# Why a file in a folder or pattern is not read, as the note says it.
NOT_AN_IMAGE, BESIDE_ITS_IMAGE, BROKEN_LINK = "not an image", "beside its image", "broken link"


def collect_inputs(
    specs: list[str],
    out_dir: Path | None = None,
    ignored: list[tuple[str, Path, str]] | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by paths, folders (their images, sorted) and glob patterns. A
    folder or pattern never yields the masks and overlays in `out_dir`: a run must not
    read its own outputs as inputs. Nor a `<stem>_mask.png` (or overlay, or confidence
    map) beside its image `<stem>.png`: that is the image's mask, ground truth kept next to
    it or an earlier run's, not a photo.

    The other files a folder holds or a pattern matches and that are not read (a .gif, a
    video, a mask beside its image; hidden files aside) are added to `ignored` as
    (folder or pattern, file, NOT_AN_IMAGE / BESIDE_ITS_IMAGE / BROKEN_LINK), so nothing is
    left out without a word (see ignored_notes)."""
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    own = out_dir.resolve() if out_dir is not None else None
    stems: dict[Path, set[str]] = {}  # folder -> stems of the images in it

    def image_stems(folder: Path) -> set[str]:
        if folder not in stems:
            try:
                stems[folder] = {
                    f.stem for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and not _is_output(f)
                }
            except OSError:
                stems[folder] = set()
        return stems[folder]

    def why_not(f: Path) -> str | None:
        """None for an image to read; else why not, or "" for a file not worth a word."""
        if own is not None and _is_output(f) and f.parent.resolve() == own:
            return ""  # this run's own outputs
        if not f.is_file():
            return BROKEN_LINK if f.is_symlink() and not f.exists() else ""  # folders: not files
        if f.suffix.lower() not in IMAGE_EXTS:
            return "" if f.name.startswith(".") else NOT_AN_IMAGE  # .DS_Store and the like are no one's photos
        if _is_output(f) and _output_stem(f) in image_stems(f.parent):
            return BESIDE_ITS_IMAGE
        return None

    def keep(spec: str, candidates: list[Path]) -> list[Path]:
        kept = []
        for f in candidates:
            why = why_not(f)
            if why is None:
                kept.append(f)
            elif why and ignored is not None:
                ignored.append((spec, f, why))
        return kept

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            images = keep(spec, sorted(p.iterdir()))
            if not images:
                missing.append((spec, "folder holds no image files"))
            found += images
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(spec):
            expanded = _glob(spec) if "**" in spec else sorted(Path(m) for m in glob.glob(spec))
            matches = keep(spec, expanded)
            if not matches:
                missing.append((spec, "pattern matches no image files"))
            found += matches
        else:
            missing.append((spec, "not found"))
    return list(dict.fromkeys(found)), missing


def ignored_notes(ignored: list[tuple[str, Path, str]]) -> list[str]:
    """One line per folder or pattern and reason, e.g. `2 files in photos/ skipped: not
    images segtool reads (.gif, .mp4); pass videos by name`."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for spec, f, why in ignored:
        groups.setdefault((spec, why), []).append(f)
    lines = []
    for (spec, why), files in groups.items():
        n = len(files)
        where = f"in {spec.rstrip('/') or '/'}/" if Path(spec).is_dir() else f"matched by {spec}"
        head = f"{n} file{'s' if n != 1 else ''} {where} skipped"
        names = ", ".join(f.name for f in files[:3]) + (", ..." if n > 3 else "")
        if why == NOT_AN_IMAGE:
            exts = sorted({f.suffix.lower() or "no extension" for f in files})
            shown = ", ".join(exts[:6]) + (", ..." if len(exts) > 6 else "")
            videos = any(f.suffix.lower() in VIDEO_EXTS for f in files)
            lines.append(f"{head}: not images segtool reads ({shown})" + ("; pass videos by name" if videos else ""))
        elif why == BESIDE_ITS_IMAGE:
            what = "a mask or overlay beside its image" if n == 1 else "masks or overlays beside their images"
            lines.append(f"{head}: {what} ({names})")
        else:
            lines.append(f"{head}: links to files that do not exist ({names})")
    return [printable(line) for line in lines]


def source_record(source: Path) -> str:
    """How an output records the input it was made from: the absolute path, with the bytes
    of a name that is not UTF-8 escaped (`bad\\xff.png`): a PNG text chunk holds Latin-1
    or UTF-8 text only, and the raw name made Pillow raise UnicodeEncodeError."""
    return printable(Path(source).resolve())


def png_bytes(img: Image.Image, source: Path | None = None) -> bytes:
    buf = io.BytesIO()
    info = PngInfo()
    if source is not None:
        info.add_text(SOURCE_KEY, source_record(source))
    img.save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()


def mask_source(mask_path: Path) -> str | None:
    """The input a segtool mask was made from, as written into it; None when unknown."""
    try:
        with Image.open(mask_path) as m:
            return m.info.get(SOURCE_KEY)
    except (OSError, ValueError):
        return None


def jpeg_with_source(jpeg: bytes, source: Path) -> bytes:
    """`jpeg` with a comment segment recording `source`, so a later run can tell its own
    overlay from a picture of the same name that it must not replace. The comment goes
    after the JFIF header, which must stay first."""
    text = JPEG_SOURCE + source_record(source).encode("utf-8")
    if len(text) > 65000 or jpeg[:2] != b"\xff\xd8":
        return jpeg
    at = 2
    if jpeg[2:4] == b"\xff\xe0":  # APP0 (JFIF)
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[at:]


def overlay_source(overlay_path: Path) -> str | None:
    """The input a segtool overlay was made from, as its comment records; None when unknown
    (not segtool's, or from a segtool that did not record it)."""
    try:
        with Image.open(overlay_path) as m:
            comment = m.info.get("comment", b"")
    except (OSError, ValueError):
        return None
    if isinstance(comment, bytes) and comment.startswith(JPEG_SOURCE):
        return comment[len(JPEG_SOURCE) :].decode("utf-8", "replace")
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
    width = (
        max(cv2.getTextSize(names[c], cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for c in present) + row + 3 * pad
    )
    box = picture[: min(h, pad * 2 + row * len(present)), : min(w, width)]
    box[:] = (box * 0.35).astype(np.uint8)  # darken behind the text, so it reads on any image
    for i, c in enumerate(present):
        y = pad + i * row
        colour = tuple(int(v) for v in lut[c, 0])
        cv2.rectangle(picture, (pad, y + 2), (pad + row - 4, y + row - 2), colour, -1)
        cv2.putText(
            picture,
            names[c],
            (2 * pad + row, y + th + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )


def overlay_image(
    image: np.ndarray, pred: np.ndarray, lut: np.ndarray, names: Sequence[str] | None = None
) -> np.ndarray:
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


def mask_png(pred: np.ndarray, lut: np.ndarray, source: Path | None = None) -> bytes:
    """The palette PNG of a class map (recording `source`, the input, when given)."""
    mask = Image.fromarray(pred.astype(np.uint8))  # "L"; putpalette turns it into "P"
    mask.putpalette(lut.flatten().tolist())
    return png_bytes(mask, source)


def overlay_jpeg(
    image: np.ndarray, pred: np.ndarray, lut: np.ndarray, legend: Sequence[str] | None, source: Path | None = None
) -> bytes:
    """The overlay as JPEG bytes, with a legend of the classes present when `legend` gives
    the class names (recording `source` in a comment when given)."""
    blended = overlay_image(image, pred, lut, legend)
    # The overlay is a picture for people: JPEG encodes a 360x480 blend in about 1 ms
    # where PNG took about 25, and makes a file 5x smaller. The mask stays lossless.
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise SegtoolError(f"cannot encode the overlay of {printable(source) if source else 'an image'} as JPEG")
    data = encoded.tobytes()
    return jpeg_with_source(data, source) if source is not None else data


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
    confidence map when `confidence_path` is given. The bytes are mask_png's,
    overlay_jpeg's and confidence_png's, which `segtool serve` answers with."""
    atomic_write_bytes(mask_path, mask_png(pred, lut, source))
    if confidence_path is not None and confidence is not None:
        atomic_write_bytes(confidence_path, png_bytes(confidence_png(confidence), source))
    if overlay_path is not None:
        atomic_write_bytes(overlay_path, overlay_jpeg(image, pred, lut, legend, source))


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


def _exists(path: Path) -> bool:
    # Path.exists raises on a name the file system refuses (too long): the write then
    # says so for that input alone.
    try:
        return path.exists()
    except OSError:
        return False


def _clobber_check(path: Path, targets: tuple[Path, Path | None, Path | None]) -> tuple[str | None, bool]:
    """Without --overwrite: (why `path` must not be written, None if it may; whether all
    its outputs are already there). A file of an output's name is replaced only when it is
    segtool's own output of this same input: a mask or confidence map records its input
    (a PNG text chunk), an overlay too (a JPEG comment). A file without a record is
    someone else's (ground truth kept beside its image, say) and never replaced, except an
    overlay beside segtool's own mask: overlays did not always carry a record."""
    mine = source_record(path)
    mask, overlay, conf = targets
    mask_is_mine = False
    fix = "pass --overwrite to replace it or choose another --out"
    for t in (mask, conf):
        if t is None or not _exists(t):
            continue
        made_from = mask_source(t)
        if made_from is None:
            return f"{printable(t)} exists and segtool did not write it (it records no input); {fix}", False
        if made_from != mine:
            return f"{printable(t)} was made from {made_from}; {fix}", False
        mask_is_mine = mask_is_mine or t == mask
    if overlay is not None and _exists(overlay):
        made_from = overlay_source(overlay)
        if made_from is None and not mask_is_mine:
            return (
                f"{printable(overlay)} exists and segtool did not write it (no mask of segtool's beside it); {fix}",
                False,
            )
        if made_from is not None and made_from != mine:
            return f"{printable(overlay)} was made from {made_from}; {fix}", False
    return None, all(_exists(t) for t in targets if t is not None)


def _name_check(out_dir: Path, targets: tuple[Path, Path | None, Path | None]) -> str | None:
    """Why an output name cannot be created in `out_dir` (too long for its file system),
    checked before the model runs: one input with a long name fails alone."""
    for t in targets:
        why = t is not None and name_too_long(out_dir, t.name)
        if why:
            shown = t.name if len(t.name) <= 40 else f"{t.name[:20]}...{t.name[-16:]}"
            return (
                f"its output name {printable(shown)} is too long for the file system ({why}); "
                "rename the input to a shorter name"
            )
    return None


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
    `confidence`) for every readable input; unreadable ones are reported, not fatal, and
    so are inputs whose output names the file system refuses and, unless `overwrite`,
    inputs whose output names are taken by files segtool did not make from them. Files in
    the folders and patterns that are not read as images are counted in `ignored` and
    said on stderr, one line per kind (`notes`).

    Reading the next batches and writing the last ones run in threads while the model
    works on the current one (decoding and encoding release the GIL). With
    `predictor.streams` > 1, that many batches run through the model at once: for an ONNX
    Runtime session of one thread per stream, which keeps every core busy without
    intra-op synchronisation.
    """
    batch_size, streams = predictor.batch_size, predictor.streams
    max_pixels()  # a bad SEGTOOL_MAX_PIXELS is one error now, not the same failure for every file
    ignored: list[tuple[str, Path, str]] = []
    files, missing = collect_inputs(inputs, out_dir, ignored)
    result = PredictResult(failed=[(printable(name), printable(why)) for name, why in missing])
    result.ignored = [f for _, f, _ in ignored]
    result.notes = ignored_notes(ignored)
    for line in result.notes:
        # Not a failure (the exit code stays 0 when every image is written), but never silent.
        tqdm.write(line, file=sys.stderr)
    if not files:
        return result
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegtoolError(
            f"cannot create output folder {printable(out_dir)} ({e.strerror}); choose another --out"
        ) from None
    lut = colour_lut(np.asarray(predictor.colours, dtype=np.uint8))
    todo = []
    for path, name in zip(files, output_names(files)):
        targets = (
            out_dir / f"{name}{MASK_SUFFIX}",
            out_dir / f"{name}{OVERLAY_SUFFIX}" if overlays else None,
            out_dir / f"{name}{CONFIDENCE_SUFFIX}" if confidence else None,
        )
        refused, there = _name_check(out_dir, targets), False
        if not refused and not overwrite:
            refused, there = _clobber_check(path, targets)
        if refused:
            result.failed.append((printable(path), refused))
        elif there:
            result.skipped.append(path)
        else:
            todo.append((path, targets))
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress)
    ahead = streams + 1  # chunks being read while the model works

    def read(chunk: list) -> list:
        return [_read(p) for p, _ in chunk]

    names = predictor.names if legend else None
    pending: deque[tuple[Path, Path, Future]] = deque()  # writes in flight, in input order

    def finish(good: list, preds: Future) -> None:
        for (path, (mask_path, overlay_path, conf_path), image), maps in zip(good, preds.result()):
            pending.append(
                (
                    path,
                    mask_path,
                    writers.submit(
                        write_outputs,
                        maps.classes,
                        image,
                        lut,
                        mask_path,
                        overlay_path,
                        path,
                        names,
                        maps.confidence,
                        conf_path,
                    ),
                )
            )
            bar.update(1)

    def settle(wait: bool) -> None:
        # A mask counts as written once its write has returned. A name the file system
        # refuses fails that input alone; any other write error (disk full, read-only
        # folder) would fail every input after it, so it stops the run, as soon as seen.
        while pending and (wait or pending[0][2].done()):
            path, mask_path, future = pending.popleft()
            try:
                future.result()
            except WriteError as e:
                if e.errno not in NAME_ERRNOS:
                    raise
                result.failed.append((printable(path), e.one_line()))
            else:
                result.written.append(mask_path)

    try:
        with ThreadPoolExecutor(2) as readers, ThreadPoolExecutor(2) as writers, ThreadPoolExecutor(streams) as models:
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
                        result.failed.append((printable(path), printable(image.one_line())))
                        bar.update(1)
                    else:
                        good.append((path, targets, image))
                if good:
                    running.append(
                        (good, models.submit(predictor.predict_maps, [img for _, _, img in good], confidence))
                    )
                while len(running) > streams:  # one batch queued behind the running ones: no idle stream
                    finish(*running.popleft())
                settle(wait=False)
            while running:
                finish(*running.popleft())
            settle(wait=True)
    finally:
        bar.close()
    return result
