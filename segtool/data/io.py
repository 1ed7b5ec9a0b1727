"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

import io
import math
import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segtool.config import DataConfig
from segtool.errors import ConfigError, DataError, ImageTooLarge

# Larger images are refused by name before any decoder runs (a 300 KB PNG can declare
# 100 megapixels and exhaust memory); SEGTOOL_MAX_PIXELS raises the limit.
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


def max_pixels() -> int:
    """The pixel limit: SEGTOOL_MAX_PIXELS, or DEFAULT_MAX_PIXELS when unset. A setting that
    is not a positive number is an error: read as "no limit", a typo would switch the
    protection off without a word."""
    raw = os.environ.get("SEGTOOL_MAX_PIXELS", "").strip()
    if not raw:  # set but empty is how shells unset a variable for one command
        return DEFAULT_MAX_PIXELS
    try:
        value = float(raw)  # "1e8" and "100_000_000" are numbers too
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(
            f"SEGTOOL_MAX_PIXELS is {raw!r}; set it to a positive number of pixels (e.g. 100000000), "
            f"or unset it for the default of {DEFAULT_MAX_PIXELS}"
        )
    return int(value)


def _refuse_if_large(path: Path, size: tuple[int, int], what: str) -> None:
    limit = max_pixels()
    w, h = size
    if w * h > limit:
        raise ImageTooLarge(
            f"{what} {path} declares {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of {limit / 1e6:.1f}; "
            "set SEGTOOL_MAX_PIXELS to a larger number of pixels to read it, or tile it"
        )


def check_pixels(path: Path, im: Image.Image, what: str) -> None:
    """Refuse, by name, an opened (not yet decoded) image above the pixel limit."""
    _refuse_if_large(path, im.size, what)


# The formats OpenCV decodes, known by the signature OpenCV itself goes by, with the
# names Pillow gives them. OpenCV is only handed a file whose format is known here and
# whose size was read from its header first: its decoders allocate whatever a header
# declares, so a 5 MB file can ask for gigabytes.
_SIGNATURES: tuple[tuple[bytes, int, tuple[str, ...]], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, ("PNG",)),
    (b"\xff\xd8\xff", 0, ("JPEG", "MPO")),  # phone photos with several pictures are MPO to Pillow
    (b"II*\x00", 0, ("TIFF",)),
    (b"MM\x00*", 0, ("TIFF",)),
    (b"II+\x00", 0, ("TIFF",)),
    (b"MM\x00+", 0, ("TIFF",)),
    (b"BM", 0, ("BMP", "DIB")),
    (b"WEBP", 8, ("WEBP",)),  # after RIFF and the chunk length
    (b"\x59\xa6\x6a\x95", 0, ("SUN",)),
    (b"GIF87a", 0, ("GIF",)),
    (b"GIF89a", 0, ("GIF",)),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, ("JPEG2000",)),
    (b"\xff\x4f\xff\x51", 0, ("JPEG2000",)),
    (b"#?RADIANCE", 0, ("HDR",)),
    (b"#?RGBE", 0, ("HDR",)),
)


def _format_of(head: bytes) -> tuple[str, ...] | None:
    """Pillow's names for the format OpenCV will decode `head` as; None for a format that
    is not on the list above."""
    if re.match(rb"P[1-6]\s", head):
        return ("PPM",)
    if re.match(rb"P[Ff]\s", head):
        return ("PFM",)
    if head[:4] == b"RIFF" and head[8:12] != b"WEBP":
        return None
    for sig, at, names in _SIGNATURES:
        if head[at : at + len(sig)] == sig:
            return names
    return None


def _tiff_size(buf: bytes) -> tuple[int, int] | None:
    """(width, height) of the first picture of a TIFF (classic or BigTIFF), from its first
    directory; None when the header is damaged."""
    try:
        order = "<" if buf[:2] == b"II" else ">"
        big = struct.unpack(order + "H", buf[2:4])[0] == 43
        if big:
            (offset,) = struct.unpack(order + "Q", buf[8:16])
            (count,) = struct.unpack(order + "Q", buf[offset : offset + 8])
            first, entry, value_at = offset + 8, 20, 12
        else:
            (offset,) = struct.unpack(order + "I", buf[4:8])
            (count,) = struct.unpack(order + "H", buf[offset : offset + 2])
            first, entry, value_at = offset + 2, 12, 8
        found = {}
        for i in range(min(count, 4096)):
            at = first + i * entry
            tag, kind = struct.unpack(order + "HH", buf[at : at + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8
                code = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if code is None:
                    return None
                size = struct.calcsize(code)
                found[tag] = struct.unpack(order + code, buf[at + value_at : at + value_at + size])[0]
        return (found[256], found[257]) if len(found) == 2 else None
    except (struct.error, KeyError):
        return None


def _hdr_size(buf: bytes) -> tuple[int, int] | None:
    """(width, height) of a Radiance HDR file: the resolution line after the blank line
    that ends its text header."""
    end = buf.find(b"\n\n", 0, 65536)
    m = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", buf[end + 2 : end + 200]) if end >= 0 else None
    if m is None or m.group(2) == m.group(5):
        return None
    first, second = int(m.group(3)), int(m.group(6))
    return (second, first) if m.group(2) == b"Y" else (first, second)


def _pfm_size(buf: bytes) -> tuple[int, int] | None:
    parts = buf[:256].split(maxsplit=3)
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None


def _declared_size(buf: np.ndarray) -> tuple[tuple[int, int] | None, tuple[str, ...] | None, int]:
    """(width, height) as the file's header declares it, Pillow's names for its format and
    its EXIF orientation, without decoding pixels. The size is None when it cannot be read
    from the header of the format OpenCV would decode."""
    data = buf.tobytes()
    names = _format_of(data[:64])
    try:
        with Image.open(io.BytesIO(data)) as im:
            # Pillow's size counts only if OpenCV decodes the file as the same format: a
            # file one library takes for a small image the other may take for a huge one.
            if names is not None and im.format in names:
                return im.size, names, orientation(im)
    except Exception:  # any failure to parse a header: the parsers below, or a refusal
        pass
    parse = {"TIFF": _tiff_size, "HDR": _hdr_size, "PFM": _pfm_size}.get(names[0]) if names else None
    return (parse(data) if parse else None), names, 1


def header_size(path: Path) -> tuple[tuple[int, int], str] | None:
    """(width, height) and format name of an image Pillow cannot open but read_image reads
    (float or 64-bit TIFF, Radiance HDR, PFM), from its header; None for any other file."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    size, names, _ = _declared_size(buf)
    return (size, names[0]) if size is not None and names is not None else None


def _opencv_knows(path: Path) -> bool:
    """Whether OpenCV has a decoder for the file: it reads the signature, no pixels."""
    try:
        str(path).encode("utf-8")  # OpenCV crashes the process (not an exception) on other names
        return bool(cv2.haveImageReader(str(path)))
    except Exception:  # a name OpenCV cannot take (not UTF-8, say): no decoder to fear
        return False


def to_8bit(img: np.ndarray, path: Path) -> np.ndarray:
    """Decoded pixels as uint8, scaled by their bit depth (16-bit: x / 257; float: x * 255
    from [0, 1]), never by the picture's own range: stretched to its min and max, one
    picture saved at two bit depths would look different to the model."""
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind == "u" and img.dtype.itemsize == 2:  # either byte order
        return ((img.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)  # round(x / 257)
    if img.dtype.kind == "f":
        lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
        if not (np.isfinite(img).all() and lo >= 0 and hi <= 1):
            shown = "not-a-number or infinite values" if not np.isfinite(img).all() else f"values from {lo:g} to {hi:g}"
            raise DataError(
                f"image {path} is a float image with {shown}; float images must hold values in [0, 1] "
                "(they are scaled by 255): rescale it, or save it as an 8- or 16-bit PNG or TIFF"
            )
        return np.rint(img * 255).astype(np.uint8)
    raise DataError(
        f"image {path} holds {img.dtype} pixels; segtool reads 8- and 16-bit images and float images in [0, 1]: "
        "save it as an 8- or 16-bit PNG or TIFF"
    )


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, whatever the file holds (grey, RGBA, 16-bit, float and CMYK are
    converted), turned upright as its EXIF orientation says. A file whose header declares
    more than SEGTOOL_MAX_PIXELS pixels, or whose size cannot be read from its header, is
    refused before any decoder runs."""
    buf = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    if buf is None:
        raise DataError(f"image {path} not found")
    return decode_image(buf, path)


def decode_image(buf: np.ndarray, path: Path | str, on_disk: bool = True) -> np.ndarray:
    """read_image for an encoded image already in memory (`buf`, uint8 bytes): the same
    checks, conversions and one-line errors, naming `path` (`segtool serve` names an
    upload by its file name; `on_disk` False: there is no file to ask OpenCV about)."""
    size, names, orient = _declared_size(buf)
    if size is None:
        # Formats Pillow reads (PNG, JPEG, TIFF, ...) whose header fails are damaged; others
        # may be fine files in a format whose size segtool cannot check before decoding.
        if (names is not None and names[0] in ("HDR", "PFM")) or (names is None and on_disk and _opencv_knows(path)):
            raise DataError(
                f"cannot read the header of image {path} to check its size before decoding it; "
                "convert it to PNG, JPEG or TIFF"
            )
        raise DataError(f"image {path} cannot be decoded (empty, truncated or not an image); replace or remove it")
    _refuse_if_large(path, size, "image")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"image {path} cannot be decoded (empty, truncated or not an image); replace or remove it")
    img = to_8bit(img, path)
    if img.ndim == 2:
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 2:  # grey + alpha: the grey
        rgb = cv2.cvtColor(np.ascontiguousarray(img[..., 0]), cv2.COLOR_GRAY2RGB)
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


def label_values(arr: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """The decoded values of a mask, checked to be labels: grey+alpha (LA) and palette+alpha
    (PA) masks give their grey or palette channel (alpha marks no class); 32-bit and float
    masks must hold whole numbers from 0, since a cast would wrap -1 to the ignore index 255
    and truncate 1.9 to class 1 without a word. Returned as int64 (uint8 for 8-bit modes)."""
    if mode in ("LA", "La", "PA") and arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "b":  # 1-bit masks
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        bad = ~finite | (arr != np.floor(np.where(finite, arr, 0)))
        if bad.any():
            shown = ", ".join(f"{v:g}" for v in np.unique(arr[bad])[:3].tolist())
            raise DataError(
                f"mask {path} (mode {mode}) holds values that are not whole numbers ({shown}); "
                "mask values are class indices: round them when making the masks, or save them as 8-bit PNG"
            )
    if arr.dtype.kind in "if" and arr.size and arr.min() < 0:
        shown = ", ".join(f"{v:g}" for v in np.unique(arr[arr < 0])[:3].tolist())
        raise DataError(
            f"mask {path} (mode {mode}) holds negative values ({shown}); mask values are class indices from 0, "
            "with the ignore index for unlabelled pixels: fix the masks, e.g. save them as 8-bit PNG"
        )
    if arr.dtype.kind == "f":
        arr = np.minimum(arr, 2.0**62)  # larger floats would wrap when cast; still reported out of range
    return arr.astype(np.int64)


def read_mask(path: Path, data: DataConfig, raw: bool = False) -> np.ndarray:
    """HxW uint8 class indices, with `data.ignore_index` for pixels that do not count.

    Index masks may be 8-bit grey, palette ("P": the palette indices are the classes, as in
    Pascal VOC), 16-bit, 32-bit or float (whole numbers from 0), with or without alpha
    (ignored). With `data.mask_format: rgb` masks are decoded with the colours
    of `data.classes`: palette masks through their own palette, grey ones as grey colours.
    With `raw`, the decoded values (index) or HxWx3 colours (rgb), before any class lookup.
    """
    try:
        with Image.open(path) as im:
            check_pixels(path, im, "mask")
            im.load()
            mode, orient = im.mode, orientation(im)
            grey = mode in ("L", "LA", "La", "I", "F") or mode.startswith("I;16")
            if data.mask_format == "rgb" and mode not in ("RGB", "RGBA") and not grey:
                # Palette PNGs through their own palette (its order may differ from file
                # to file); other colour modes (CMYK, ...) as the colours they show.
                im, mode = im.convert("RGB"), "RGB"
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"mask {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"mask {path} cannot be read ({e}); replace or remove it") from None
    arr = upright(label_values(arr, mode, path), orient)
    if data.mask_format == "rgb" and grey:
        # Grey masks as grey colours, so (0,0,0)/(255,255,255) classes fit; a level above
        # 255 is no colour (a conversion would clip it to white without a word).
        if arr.max(initial=0) > 255:
            raise DataError(
                f"mask {path} (mode {mode}) has values up to {arr.max()}, which are no grey colour; "
                "set data.mask_format: index if its values are class indices"
            )
        arr = np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)

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

    if arr.ndim == 3:  # RGB or RGBA (alpha is no label, as in grey+alpha masks)
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


def header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) as viewers show the image (after its EXIF orientation) and mode of
    an image file, from its header alone. An image Pillow cannot open but read_image reads
    (float TIFF, HDR, PFM) gives its format's name as the mode, so that the check at the
    start of training does not refuse what training reads."""
    try:
        with Image.open(path) as im:
            return oriented_size(im), im.mode
    except Exception:
        found = header_size(path)
        if found is None:
            raise
        return found
