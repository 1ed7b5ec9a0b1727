"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segtool.config import DataConfig
from segtool.errors import DataError

# Larger images are refused by name before decoding (a 300 KB PNG can declare 100
# megapixels and exhaust memory); SEGTOOL_MAX_PIXELS raises the limit.
DEFAULT_MAX_PIXELS = 64_000_000
# segtool enforces its own limit, by name, before decoding; PIL's fixed one would
# override SEGTOOL_MAX_PIXELS with a warning or an error of its own.
Image.MAX_IMAGE_PIXELS = None
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

cv2.setNumThreads(0)  # data-loader workers are the parallelism; OpenCV's own threads would oversubscribe


# EXIF orientation (tag 274) -> the array operation that shows the pixels as viewers do
# (the same transposes as PIL.ImageOps.exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


def orientation(im: Image.Image) -> int:
    """The EXIF orientation an opened image declares (1, upright, when none), read from
    its header without decoding the pixels."""
    try:
        if "exif" not in im.info and im.format != "TIFF":
            return 1
        value = im.getexif().get(274, 1)
        return value if value in _ORIENT else 1
    except Exception:  # a damaged EXIF block must not make a readable image unreadable
        return 1


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as viewers show the image: swapped for orientations 5-8."""
    w, h = im.size
    return (h, w) if orientation(im) >= 5 else (w, h)


def upright(arr: np.ndarray, orient: int) -> np.ndarray:
    """`arr` (HxW or HxWxC) turned as its EXIF orientation says."""
    return np.ascontiguousarray(_ORIENT[orient](arr)) if orient in _ORIENT else arr


def _decode_limit() -> int:
    return int(float(os.environ.get("SEGTOOL_MAX_PIXELS", DEFAULT_MAX_PIXELS)))


def _check_pixels(path: Path, im: Image.Image, what: str) -> None:
    limit = _decode_limit()
    w, h = im.size
    if w * h > limit:
        raise DataError(
            f"{what} {path} declares {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of {limit / 1e6:.1f}; "
            "set SEGTOOL_MAX_PIXELS to a larger number of pixels to read it, or tile it"
        )


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, whatever the file holds (grey, RGBA, 16-bit and CMYK are converted),
    turned upright as its EXIF orientation says. A file whose header declares more than
    SEGTOOL_MAX_PIXELS pixels is refused before decoding."""
    buf = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    if buf is None:
        raise DataError(f"image {path} not found")
    orient = 1
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            _check_pixels(path, im, "image")
            orient = orientation(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass  # OpenCV may still read it (or says below that it cannot)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise DataError(f"image {path} cannot be decoded (empty, truncated or not an image); replace or remove it")
    if img.dtype != np.uint8:  # 16-bit or float images: scale to 8 bits instead of clipping
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return upright(rgb, orient)


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _map_values(arr: np.ndarray, data: DataConfig, path: Path) -> np.ndarray:
    """Stored values -> class indices when the classes declare their `value`s; ignore_values
    (and ignore_index, unless a class claims it) -> ignore; any other value is an error."""
    values = [c.value for c in data.classes]
    lut = np.full(max([*values, *data.ignore_values, data.ignore_index]) + 2, -1, np.int64)
    lut[data.ignore_values] = data.ignore_index
    if data.ignore_index not in values:
        lut[data.ignore_index] = data.ignore_index
    lut[values] = np.arange(len(values))
    clipped = np.minimum(arr, len(lut) - 1)  # the last entry is -1: any larger value is unknown
    out = lut[clipped]
    if (out < 0).any():
        found = np.unique(arr[out < 0])[:5].tolist()
        named = ", ".join(f"{c.name}={c.value}" for c in data.classes)
        raise DataError(
            f"mask {path} has values {found} that are no class's value ({named}) and not ignored; "
            f"give a class that value, or list it in data.ignore_values{_jpeg_hint(path)}"
        )
    return out.astype(np.uint8)


def _jpeg_hint(path: Path) -> str:
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        return " (this mask is a JPEG: JPEG is lossy and invents values at every edge; save masks as PNG)"
    return ""


def read_mask(path: Path, data: DataConfig, raw: bool = False) -> np.ndarray:
    """HxW uint8 class indices, with `data.ignore_index` for pixels that do not count.

    Index masks may be 8-bit grey, palette ("P": the palette indices are the classes, as in
    Pascal VOC) or 16-bit. With `data.mask_format: rgb` masks are decoded with the colours
    of `data.classes`: palette masks through their own palette, grey ones as grey colours.
    With `raw`, the decoded values (index) or HxWx3 colours (rgb), before any class lookup.
    """
    try:
        with Image.open(path) as im:
            _check_pixels(path, im, "mask")
            im.load()
            mode, orient = im.mode, orientation(im)
            if data.mask_format == "rgb" and mode not in ("RGB", "RGBA"):
                # Palette PNGs through their own palette (its order may differ from file to
                # file); grey masks as grey colours, so (0,0,0)/(255,255,255) classes fit.
                im = im.convert("RGB")
            arr = upright(np.asarray(im), orient)
    except FileNotFoundError:
        raise DataError(f"mask {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"mask {path} cannot be read ({e}); replace or remove it") from None

    if data.mask_format == "rgb":
        if raw:
            return arr[..., :3]
        codes = _colour_codes(arr[..., :3])
        lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(c.color for c in data.classes)}
        lut.update({(r << 16) | (g << 8) | b: data.ignore_index for r, g, b in data.ignore_colors})
        uniq, inverse = np.unique(codes, return_inverse=True)
        unknown = [u for u in uniq if u not in lut]
        if unknown:
            shown = ", ".join(f"({u >> 16},{(u >> 8) & 255},{u & 255})" for u in unknown[:3])
            hint = "add them to data.classes, or to data.ignore_colors if they mark unlabelled pixels"
            if mode in ("L", "LA", "I", "I;16", "F"):
                hint += f", or, if the mask's {mode} values are class indices, set data.mask_format: index"
            raise DataError(f"mask {path} has colours not in data.classes: {shown}; {hint}{_jpeg_hint(path)}")
        return np.array([lut[u] for u in uniq], np.uint8)[inverse.reshape(codes.shape)]

    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(
                f"mask {path} is a colour ({mode}) image; set data.mask_format: rgb with class colours, "
                "or save masks as single-channel class indices"
            )
        arr = arr[..., 0]
    arr = arr.astype(np.int64)
    if raw:
        return arr
    if data.has_values:
        return _map_values(arr, data, path)
    if data.ignore_values:
        arr = np.where(np.isin(arr, data.ignore_values), data.ignore_index, arr)
    if data.reduce_zero_label:  # ADE20K style: 0 is "other", real classes start at 1
        arr = np.where((arr == 0) | (arr == data.ignore_index), data.ignore_index + 1, arr) - 1
    bad = (arr >= data.num_classes) & (arr != data.ignore_index)
    if bad.any():
        values = np.unique(arr[bad])[:5].tolist()
        raise DataError(
            f"mask {path} has values {values} outside the {data.num_classes} classes "
            f"(0..{data.num_classes - 1}) and not the ignore index {data.ignore_index}; "
            f"fix the mask or set data.ignore_index / data.classes{_jpeg_hint(path)}"
        )
    return arr.astype(np.uint8)
