"""Labels as annotation tools export them: COCO instances JSON, LabelMe JSON and CVAT for
images 1.1 XML, read directly and rasterised into index masks.

One rasteriser serves training, check-data, init and `segtool convert`: each image's shapes
are drawn in order (a format's z-order first, then file order: later shapes on top) into an
HxW uint8 mask of class indices, with the ignore index for ignored labels. A mask is drawn
once and cached as a PNG under `$SEGTOOL_CACHE/annotations/` (default
~/.cache/segtool/annotations), keyed by a hash of the image's annotations, the image size,
the class mapping and the settings, so that every later scan, and every downstream piece
(datasets, transforms, check-data, metrics), reads a plain index-mask PNG. Changing the
annotations, the classes or the settings changes the key; stale entries are never read and
the folder may be deleted at any time.

Torch-free: numpy, OpenCV, Pillow and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import io
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from segtool.data.io import IMAGE_EXTS, header
from segtool.errors import ConfigError, DataError
from segtool.fsutil import atomic_write_bytes

FORMATS = ("coco", "labelme", "cvat")
# Bumped whenever the rasteriser draws differently, so that cached masks are redrawn.
RASTER_VERSION = 1
# LabelMe's convention for a label whose pixels count in neither loss nor metrics.
IGNORE_LABEL = "__ignore__"
BACKGROUND = "background"
_BACKGROUND_ALIASES = ("background", "_background_")  # labelme2voc names class 0 _background_
_SHIFT = 4  # OpenCV fixed-point bits: shapes are drawn at 1/16 pixel, not rounded to whole pixels


# --------------------------------------------------------------------------- shapes


@dataclass
class Shape:
    """One drawn shape: `kind` is polygon, rectangle, circle, line, ellipse or bitmap."""

    label: str
    kind: str
    where: str  # "shape 3" / "annotation id 17": how an error names it
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # Nx2 (x, y)
    z: int = 0
    width: float | None = None  # lines: stroke width in pixels
    angle: float = 0.0  # ellipses and rotated boxes: degrees
    bitmap: np.ndarray | None = None  # bitmaps: HxW bool at (left, top) = points[0]
    rle: dict | None = None  # COCO RLE: {"size": [h, w], "counts": list or str}, decoded when drawn


@dataclass
class ImageAnn:
    """The shapes of one image, as one annotation file gives them."""

    source: Path  # the annotation file
    name: str  # the image's name as the file gives it
    image: Path | None  # the image file found on disk (None: embedded or missing)
    size: tuple[int, int] | None  # (height, width) the file declares
    shapes: list[Shape]
    material: bytes  # what the cache key hashes: this image's annotations as the file holds them
    offset: float = 0.5  # coordinates run along pixel edges: pixel (0, 0) is the square from (0, 0) to (1, 1)
    outline: bool = False  # polygons also take the pixels their edges pass through (LabelMe, as PIL draws)
    embedded: bytes | None = None  # LabelMe imageData
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def label(self, shape: Shape) -> str:
        """How a message names a shape: the file, the image (for files of many) and the shape."""
        image = "" if self.source.suffix.lower() == ".json" and self.name == self.source.stem else f" image {self.name}"
        return f"{self.source}{image} {shape.where} ({shape.label})"


@dataclass
class AnnotationSet:
    fmt: str
    images: list[ImageAnn]
    labels: list[str]  # every label the files name or declare, in a stable order (COCO: by category id)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- RLE


def rle_decode(counts: str | list[int], height: int, width: int) -> np.ndarray:
    """A COCO RLE (a list of counts, or the compressed string) as an HxW bool mask. Runs
    alternate 0s and 1s, starting with 0s, down the columns (column-major order)."""
    runs = _rle_string_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != height * width or min(runs, default=0) < 0:
        raise ValueError(f"its runs cover {sum(runs)} pixels, not {height}x{width} = {height * width}")
    values = np.zeros(len(runs), np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.astype(bool)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """An HxW bool mask as compressed COCO RLE: {"size": [h, w], "counts": str}."""
    flat = np.asarray(mask, bool).T.ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _rle_string(runs)}


def _rle_string_counts(s: str) -> list[int]:
    """COCO's compressed RLE (maskApi.c rleFrString): each count in 5-bit groups, low bits
    first, as characters from '0'; a count from the third on is stored as the difference
    to the count two before it."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("its counts string ends in the middle of a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"its counts string holds {s[p]!r}, which compressed RLE never does")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _rle_string(counts: list[int]) -> str:
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


# --------------------------------------------------------------------------- reading files


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"annotation file {path} cannot be read ({e.strerror}); check the path and permissions"
        ) from None
    try:
        return json.loads(raw.decode("utf-8-sig")), raw
    except UnicodeDecodeError:
        raise DataError(f"annotation file {path} is not UTF-8 text; export it again from the annotation tool") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"annotation file {path} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); "
            "export it again from the annotation tool"
        ) from None


def detect_format(path: Path) -> str:
    """coco, labelme or cvat, from the file (or folder of LabelMe files) itself."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.json")):
            return "labelme"
        raise DataError(
            f"annotation folder {path} holds no .json files; give a LabelMe folder, a COCO .json or a CVAT .xml"
        )
    if not path.is_file():
        raise DataError(f"annotation file {path} not found; check the split's 'annotations' in the config")
    if path.suffix.lower() == ".xml":
        return "cvat"
    if path.suffix.lower() == ".json":
        data, _ = _read_json(path)
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return "coco"
        if isinstance(data, dict) and "shapes" in data:
            return "labelme"
        raise DataError(
            f"annotation file {path} is neither COCO (keys images, annotations, categories) nor LabelMe (key shapes); "
            "export COCO instances, LabelMe or CVAT for images 1.1"
        )
    raise DataError(f"annotation file {path} is not .json or .xml; give a COCO .json, a LabelMe folder or a CVAT .xml")


def _find_image(name: str, folders: list[Path]) -> Path | None:
    name = name.replace("\\", "/")
    for folder in folders:
        p = folder / name
        if p.is_file():
            return p
    for folder in folders:  # a path from the annotator's machine: its file name alone
        p = folder / Path(name).name
        if p.is_file():
            return p
    return None


def _image_folders(source: Path, images: Path | None) -> list[Path]:
    """Where a COCO or CVAT file's images may be: the split's `images` folder, else beside
    the file, in images/ beside it, or in images/ one level up (annotations/x.json)."""
    if images is not None:
        return [images]
    return [source.parent, source.parent / "images", source.parent.parent / "images"]


def _points(flat: list[float]) -> np.ndarray:
    return np.asarray(flat, np.float64).reshape(-1, 2)


def _coco(path: Path, images: Path | None) -> AnnotationSet:
    data, _ = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"annotation file {path} has no 'images' list; export COCO instances JSON")
    cats = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c and "name" in c:
            cats[c["id"]] = str(c["name"])
    labels = [cats[k] for k in sorted(cats, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else 0))]
    by_image: dict[Any, list[dict]] = {}
    out = AnnotationSet("coco", [], list(dict.fromkeys(labels)))
    for a in data.get("annotations") or []:
        if isinstance(a, dict):
            by_image.setdefault(a.get("image_id"), []).append(a)
    folders = _image_folders(path, images)
    known_ids = set()
    for rec in data["images"]:
        if not isinstance(rec, dict) or "file_name" not in rec:
            raise DataError(f"annotation file {path}: an entry of 'images' has no file_name; export it again")
        known_ids.add(rec.get("id"))
        name = str(rec["file_name"])
        anns = by_image.get(rec.get("id"), [])
        size = (int(rec["height"]), int(rec["width"])) if "height" in rec and "width" in rec else None
        material = json.dumps([rec, anns], sort_keys=True).encode()
        img = ImageAnn(path, name, _find_image(name, folders), size, [], material)
        for a in anns:
            where = f"annotation id {a.get('id')}"
            label = cats.get(a.get("category_id"))
            if label is None:
                img.problems.append(
                    f"{path} image {name} {where}: category_id {a.get('category_id')} is not in the file's categories; "
                    "fix the file or add the category"
                )
                continue
            seg, z = a.get("segmentation"), 0
            if isinstance(seg, list):
                for k, poly in enumerate(seg):
                    part = f"{where}" + (f" polygon {k}" if len(seg) > 1 else "")
                    img.shapes.append(Shape(label, "polygon", part, _points(poly) if len(poly) % 2 == 0 else None, z))
            elif isinstance(seg, dict) and "counts" in seg:
                img.shapes.append(Shape(label, "rle", where, z=z, rle=seg))
            elif seg:
                img.problems.append(f"{path} image {name} {where} ({label}): segmentation is neither polygons nor RLE")
            else:
                img.notes.append(f"{path} image {name} {where} ({label}) has no segmentation; skipped")
        if not anns:
            img.notes.append(f"{path} image {name} has no annotations: all of it is unlabelled")
        out.images.append(img)
    orphans = sorted({k for k in by_image if k not in known_ids}, key=str)
    if orphans:
        out.notes.append(f"{path}: annotations name image ids {orphans[:5]} that are not in 'images'; they are skipped")
    return out


def _labelme_file(path: Path, images: Path | None) -> ImageAnn:
    data, raw = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(
            f"annotation file {path} is not a LabelMe file (no 'shapes' list); export it again from LabelMe"
        )
    name = str(data.get("imagePath") or "")
    size = None
    if data.get("imageHeight") and data.get("imageWidth"):
        size = (int(data["imageHeight"]), int(data["imageWidth"]))
    folders = [images] if images is not None else [path.parent]
    found = _find_image(name, folders) if name else None
    if found is None:  # beside it: the JSON's own name with an image extension
        beside = [p for p in sorted(folders[0].glob(f"{path.stem}.*")) if p.suffix.lower() in IMAGE_EXTS]
        found = beside[0] if beside else None
    embedded = None
    if found is None and data.get("imageData"):
        try:
            embedded = base64.b64decode(data["imageData"], validate=False)
        except (binascii.Error, ValueError):
            raise DataError(
                f"annotation file {path}: its imageData is not base64; save it again from LabelMe"
            ) from None
    img = ImageAnn(path, path.stem, found, size, [], raw, outline=True, embedded=embedded)
    if found is None and embedded is None:
        img.problems.append(
            f"image {name or path.stem + '.*'} named by {path} not found (looked in {folders[0]}); "
            "put the image there, fix imagePath, or save the file with its image data"
        )
    for i, s in enumerate(data["shapes"]):
        where = f"shape {i}"
        if not isinstance(s, dict):
            img.problems.append(f"{path} {where}: not a shape; export the file again from LabelMe")
            continue
        label, kind = str(s.get("label", "")), s.get("shape_type") or "polygon"
        try:
            pts = np.asarray(s.get("points") or [], np.float64).reshape(-1, 2)
        except (ValueError, TypeError):
            img.problems.append(f"{path} {where} ({label}): its points are not [x, y] pairs; fix or redraw it")
            continue
        if kind == "point":
            img.notes.append(f"{path} {where} ({label}) is a point: points mark no area, so it is ignored")
            continue
        if kind in ("polygon", "oriented_rectangle"):
            img.shapes.append(Shape(label, "polygon", where, pts))
        elif kind in ("rectangle", "circle"):
            img.shapes.append(Shape(label, kind, where, pts))
        elif kind in ("line", "linestrip"):
            img.shapes.append(Shape(label, "line", where, pts))
        elif kind == "mask":
            try:
                with Image.open(io.BytesIO(base64.b64decode(s.get("mask") or ""))) as m:
                    bitmap = np.asarray(m.convert("L")) > 0
            except Exception:
                img.problems.append(f"{path} {where} ({label}): its mask is not a base64 PNG; redraw it")
                continue
            img.shapes.append(Shape(label, "bitmap", where, np.round(pts[:1]), bitmap=bitmap))
        else:
            img.problems.append(
                f"{path} {where} ({label}): shape type {kind!r} is not one segtool draws "
                "(polygon, rectangle, circle, line, linestrip, point, mask); redraw it as a polygon"
            )
    if not data["shapes"]:
        img.notes.append(f"{path} has no shapes: all of its image is unlabelled")
    return img


def _labelme(path: Path, images: Path | None) -> AnnotationSet:
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    out = AnnotationSet("labelme", [], [])
    for f in files:
        if path.is_dir():
            data, _ = _read_json(f)
            if not (isinstance(data, dict) and "shapes" in data):
                out.notes.append(f"{f} is not a LabelMe file (no 'shapes'); skipped")
                continue
        out.images.append(_labelme_file(f, images))
    out.labels = sorted({s.label for img in out.images for s in img.shapes})
    return out


def _cvat_points(text: str | None) -> np.ndarray:
    pairs = [p.split(",") for p in (text or "").split(";") if p.strip()]
    return np.asarray([[float(x), float(y)] for x, y in pairs], np.float64).reshape(-1, 2)


def _cvat(path: Path, images: Path | None) -> AnnotationSet:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(
            f"annotation file {path} is not valid XML (line {line} column {col + 1}: {str(e).split(':')[0]}); "
            "export it again from CVAT"
        ) from None
    except OSError as e:
        raise DataError(
            f"annotation file {path} cannot be read ({e.strerror}); check the path and permissions"
        ) from None
    if root.tag != "annotations":
        raise DataError(
            f"annotation file {path} is not CVAT XML (its root is <{root.tag}>); export CVAT for images 1.1"
        )
    if root.find("track") is not None and root.find("image") is None:
        raise DataError(f"annotation file {path} is CVAT for video (tracks); export CVAT for images 1.1 instead")
    declared = [e.text or "" for e in root.iterfind(".//meta//labels/label/name")]
    out = AnnotationSet("cvat", [], [])
    folders = _image_folders(path, images)
    for image in root.iterfind("image"):
        name = image.get("name", "")
        size = (int(image.get("height", 0)), int(image.get("width", 0))) if image.get("height") else None
        img = ImageAnn(path, name, _find_image(name, folders), size, [], ET.tostring(image))
        for i, el in enumerate(image):
            label, where = el.get("label", ""), f"{el.tag} {i}"
            z = int(float(el.get("z_order", 0)))
            try:
                if el.tag in ("polygon", "polyline"):
                    kind = "polygon" if el.tag == "polygon" else "line"
                    img.shapes.append(Shape(label, kind, where, _cvat_points(el.get("points")), z))
                elif el.tag == "box":
                    x0, y0, x1, y1 = (float(el.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                    pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
                    rot = float(el.get("rotation", 0) or 0)
                    if rot:  # CVAT turns boxes clockwise about their centre
                        c, a = pts.mean(0), math.radians(rot)
                        r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
                        pts = (pts - c) @ r.T + c
                    img.shapes.append(Shape(label, "polygon", where, pts, z))
                elif el.tag == "ellipse":
                    cx, cy, rx, ry = (float(el.get(k)) for k in ("cx", "cy", "rx", "ry"))
                    pts = np.array([[cx, cy], [rx, ry]])
                    img.shapes.append(Shape(label, "ellipse", where, pts, z, angle=float(el.get("rotation", 0) or 0)))
                elif el.tag == "mask":
                    left, top, w, h = (int(float(el.get(k))) for k in ("left", "top", "width", "height"))
                    runs = [int(v) for v in (el.get("rle") or "").replace(" ", "").split(",") if v]
                    if sum(runs) != w * h:
                        img.problems.append(
                            f"{path} image {name} {where} ({label}): its rle covers {sum(runs)} pixels, not its "
                            f"{w}x{h} = {w * h}; export the mask again from CVAT"
                        )
                        continue
                    vals = np.zeros(len(runs), bool)
                    vals[1::2] = True
                    bitmap = np.repeat(vals, runs).reshape(h, w)  # row-major, unlike COCO
                    img.shapes.append(Shape(label, "bitmap", where, np.array([[left, top]]), z, bitmap=bitmap))
                elif el.tag in ("points", "skeleton", "cuboid"):
                    img.notes.append(f"{path} image {name} {where} ({label}) marks no area; ignored")
                # <tag> (a whole-image label) and <attribute> draw nothing
            except (TypeError, ValueError):
                img.problems.append(
                    f"{path} image {name} {where} ({label}): its coordinates cannot be read; fix or redraw it"
                )
        if not img.shapes and not img.problems:
            img.notes.append(f"{path} image {name} has no shapes: all of it is unlabelled")
        out.images.append(img)
    used = {s.label for img in out.images for s in img.shapes}
    out.labels = sorted(set(declared) | used)
    return out


def read_annotations(path: Path, fmt: str | None = None, images: Path | None = None) -> AnnotationSet:
    """Every image's shapes in a COCO file, a LabelMe file or folder, or a CVAT XML file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"annotation file {path} not found; check the split's 'annotations' in the config")
    fmt = fmt or detect_format(path)
    return {"coco": _coco, "labelme": _labelme, "cvat": _cvat}[fmt](path, images)


# --------------------------------------------------------------------------- labels -> classes


@dataclass(frozen=True)
class LabelMap:
    """Annotation label -> stored mask value (a class index, or the ignore index)."""

    classes: tuple[str, ...]
    lookup: dict[str, int]
    ignore_index: int = 255
    unlabelled: int = 0  # the value of pixels no shape covers
    line_width: int = 10

    def key(self) -> bytes:
        return json.dumps(
            [self.classes, sorted(self.lookup.items()), self.ignore_index, self.unlabelled, self.line_width]
        ).encode()

    def value(self, label: str) -> int | None:
        if label in self.lookup:
            return self.lookup[label]
        if label.lower() == IGNORE_LABEL:
            return self.ignore_index
        return None

    def unknown(self, label: str) -> str:
        hint = difflib.get_close_matches(label, list(self.lookup), n=1)
        did = f"did you mean '{hint[0]}'? " if hint else ""
        return (
            f"label '{label}' is not in data.classes; {did}add it to a class's `sources` (or as a class), "
            "or to data.ignore_labels"
        )


def default_classes(labels: list[str]) -> list[str]:
    """The classes `segtool init` writes for these labels: background first, then the labels
    in their stable order (LabelMe's __ignore__ left out: it marks ignored pixels)."""
    rest = [x for x in labels if x.lower() != IGNORE_LABEL and x.lower() not in _BACKGROUND_ALIASES]
    return [BACKGROUND, *rest]


def default_map(labels: list[str]) -> LabelMap:
    classes = default_classes(labels)
    lookup = {name: i for i, name in enumerate(classes)}
    lookup.update({b: 0 for b in labels if b.lower() in _BACKGROUND_ALIASES})
    return LabelMap(tuple(classes), lookup)


def config_map(data: Any) -> LabelMap:
    """The label map a DataConfig gives: class names and their `sources`, ignore_labels,
    unlabelled (background: the first class; ignore: the ignore index) and line_width."""
    lookup: dict[str, int] = {}
    for i, c in enumerate(data.classes):
        for label in (c.name, *c.sources):
            if lookup.get(label, i) != i:
                raise ConfigError(
                    f"label '{label}' belongs to data.classes[{lookup[label]}] and data.classes[{i}]; keep it in one"
                )
            lookup[label] = i
    for label in data.ignore_labels:
        if label in lookup:
            raise ConfigError(f"label '{label}' is both a class and in data.ignore_labels; keep it in one")
        lookup[label] = data.ignore_index
    unlabelled = 0 if data.unlabelled == "background" else data.ignore_index
    return LabelMap(tuple(c.name for c in data.classes), lookup, data.ignore_index, unlabelled, data.line_width)


# --------------------------------------------------------------------------- rasterising


def _fixed(points: np.ndarray, offset: float) -> np.ndarray:
    return np.round((points - offset) * (1 << _SHIFT)).astype(np.int32)


def shape_problem(shape: Shape) -> str | None:
    """Why a shape cannot be drawn, or None."""
    pts = shape.points
    if shape.kind == "polygon" and (pts is None or len(pts) < 3):
        n = 0 if pts is None else len(pts)
        return f"a polygon of {n} point{'s' if n != 1 else ''}: a polygon needs at least 3; redraw or delete it"
    if shape.kind in ("rectangle", "circle") and len(pts) != 2:
        return f"a {shape.kind} of {len(pts)} points: it needs 2; redraw it"
    if shape.kind == "line" and len(pts) < 2:
        return f"a line of {len(pts)} point: it needs at least 2; redraw or delete it"
    if pts is not None and len(pts) and not np.isfinite(pts).all():
        return "a shape with NaN or infinite coordinates; redraw it"
    return None


def fill_polygon(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    """Set the pixels whose centres lie inside the polygon (even-odd rule), as COCO's
    annToMask decides them: scanlines through the pixel centres, crossings paired up.
    OpenCV's fillPoly also takes every pixel an edge touches, about half a pixel more
    all round, which on small or thin shapes is several percent of their area."""
    h, w = canvas.shape
    x, y = points[:, 0], points[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    r0, r1 = max(0, math.floor(y.min() - 0.5)), min(h, math.ceil(y.max() - 0.5) + 1)
    lo, hi = np.minimum(y, y2), np.maximum(y, y2)
    dy = np.where(y2 != y, y2 - y, 1.0)
    step = max(1, 2_000_000 // len(x))  # rows at a time: rows x edges stays a few MB
    for first in range(r0, r1, step):
        rows = np.arange(first, min(r1, first + step))
        cy = rows[:, None] + 0.5
        cross = (lo <= cy) & (cy < hi)
        xs = np.sort(np.where(cross, x + (cy - y) / dy * (x2 - x), np.inf), axis=1)
        m = xs.shape[1] // 2 * 2
        starts, ends = xs[:, 0:m:2], xs[:, 1:m:2]
        valid = np.isfinite(ends)
        x0 = np.clip(np.ceil(starts[valid] - 0.5), 0, w).astype(np.int64)
        x1 = np.clip(np.ceil(ends[valid] - 0.5), 0, w).astype(np.int64)
        rr = np.broadcast_to(np.arange(len(rows))[:, None], starts.shape)[valid]
        diff = np.zeros((len(rows), w + 1), np.int32)
        np.add.at(diff, (rr, x0), 1)
        np.add.at(diff, (rr, x1), -1)
        canvas[first : first + len(rows)][np.cumsum(diff[:, :w], axis=1) > 0] = value


def _disc(x: float, y: float, r: float) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    return np.stack([x + r * np.cos(a), y + r * np.sin(a)], 1)


def stroke(canvas: np.ndarray, points: np.ndarray, width: float, value: int) -> None:
    """A polyline `width` pixels wide, as Pillow draws LabelMe's lines: each segment a
    rectangle with flat ends, the joints between segments rounded."""
    r = width / 2
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        nx, ny = -(y1 - y0) / length * r, (x1 - x0) / length * r
        quad = np.array([[x0 + nx, y0 + ny], [x1 + nx, y1 + ny], [x1 - nx, y1 - ny], [x0 - nx, y0 - ny]])
        fill_polygon(canvas, quad, value)
    for x, y in points[1:-1]:
        fill_polygon(canvas, _disc(x, y, r), value)


def _draw(canvas: np.ndarray, shape: Shape, value: int, offset: float, line_width: int, outline: bool) -> None:
    """Draw one shape with `value` into `canvas` (HxW uint8), clipped to it."""
    h, w = canvas.shape
    if shape.kind == "polygon":
        fill_polygon(canvas, shape.points, value)
        if outline:  # LabelMe (PIL's polygon(outline=1)) also sets the pixels its edges pass through
            cv2.polylines(canvas, [_fixed(shape.points, offset)], True, value, 1, cv2.LINE_8, _SHIFT)
    elif shape.kind == "rectangle":
        (x0, y0), (x1, y1) = np.round(shape.points - offset).astype(int)
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        canvas[max(y0, 0) : max(y1 + 1, 0), max(x0, 0) : max(x1 + 1, 0)] = value
    elif shape.kind == "circle":
        (cx, cy), (px, py) = shape.points
        centre = tuple(int(v) for v in _fixed(np.array([cx, cy]), offset))
        radius = int(round(math.hypot(cx - px, cy - py) * (1 << _SHIFT)))
        cv2.circle(canvas, centre, radius, value, -1, cv2.LINE_8, _SHIFT)
    elif shape.kind == "ellipse":
        (cx, cy), (rx, ry) = shape.points
        centre = tuple(int(v) for v in _fixed(np.array([cx, cy]), offset))
        axes = (int(round(rx * (1 << _SHIFT))), int(round(ry * (1 << _SHIFT))))
        cv2.ellipse(canvas, centre, axes, shape.angle, 0, 360, value, -1, cv2.LINE_8, _SHIFT)
    elif shape.kind == "line":
        stroke(canvas, shape.points, float(shape.width or line_width), value)
    elif shape.kind == "bitmap":
        left, top = (int(v) for v in shape.points[0])
        bm = shape.bitmap
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + bm.shape[0], h), min(left + bm.shape[1], w)
        if y0 < y1 and x0 < x1:
            region = canvas[y0:y1, x0:x1]
            region[bm[y0 - top : y1 - top, x0 - left : x1 - left]] = value
    elif shape.kind == "rle":
        canvas[shape.bitmap] = value


def _bounds_note(img: ImageAnn, shape: Shape, h: int, w: int) -> str | None:
    if shape.kind == "rle" or shape.points is None or not len(shape.points) or shape_problem(shape):
        return None
    pts = (
        shape.points
        if shape.kind != "bitmap"
        else np.vstack([shape.points[0], shape.points[0] + shape.bitmap.shape[::-1]])
    )
    if shape.kind in ("circle", "ellipse"):
        (cx, cy), (px, py) = shape.points
        r = math.hypot(cx - px, cy - py) if shape.kind == "circle" else max(px, py)
        pts = np.array([[cx - r, cy - r], [cx + r, cy + r]])
    lo, hi = pts.min(0), pts.max(0)
    if lo[0] >= -1 and lo[1] >= -1 and hi[0] <= w + 1 and hi[1] <= h + 1:
        return None
    whole = hi[0] < 0 or hi[1] < 0 or lo[0] > w or lo[1] > h
    return (
        f"{img.label(shape)} lies {'wholly' if whole else 'partly'} outside the {w}x{h} image"
        f"{'; it draws nothing' if whole else '; the part outside is dropped'}"
    )


def shape_notes(img: ImageAnn, height: int, width: int) -> list[str]:
    """What check-data says about an image's shapes that are drawn all the same: those
    outside the image, points, empty files."""
    notes = list(img.notes)
    for shape in img.shapes:
        note = _bounds_note(img, shape, height, width)
        if note:
            notes.append(note)
    return notes


def rasterise(img: ImageAnn, labels: LabelMap, height: int, width: int) -> tuple[np.ndarray, list[str]]:
    """(HxW uint8 mask, problems) for one image: shapes drawn in z-order, then file
    order, later ones on top; unlabelled pixels get `labels.unlabelled`. A problem (an
    unknown label, a shape that cannot be drawn, an RLE of another size) means the mask is
    not to be used."""
    canvas = np.full((height, width), labels.unlabelled, np.uint8)
    problems = list(img.problems)
    order = sorted(range(len(img.shapes)), key=lambda k: (img.shapes[k].z, k))
    for k in order:
        shape = img.shapes[k]
        value = labels.value(shape.label)
        if value is None:
            problems.append(f"{img.label(shape)}: {labels.unknown(shape.label)}")
            continue
        why = shape_problem(shape)
        if why is None and shape.kind == "rle":
            seg = shape.rle
            size = list(seg.get("size") or [])
            if size != [height, width]:
                why = f"an RLE of size {size} (HxW) on a {height}x{width} image; export the annotations again"
            else:
                try:
                    shape.bitmap = rle_decode(seg["counts"], height, width)
                except (ValueError, TypeError) as e:
                    why = f"an RLE that cannot be decoded: {e}; export the annotations again"
        if why is not None:
            problems.append(f"{img.label(shape)}: {why}")
            continue
        _draw(canvas, shape, value, img.offset, labels.line_width, img.outline)
    return canvas, problems


# --------------------------------------------------------------------------- images and the cache


def cache_root() -> Path:
    from segtool.data.synthetic import cache_dir

    return cache_dir() / "annotations"


def _safe_stem(name: str) -> str:
    stem = Path(name.replace("\\", "/")).stem or "image"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the image's header (as viewers show it), None if unreadable."""
    try:
        (w, h), _ = header(path)
        return h, w
    except Exception:
        return None


def _embedded_image(img: ImageAnn) -> Path:
    """LabelMe's imageData, written once into the cache under the JSON's own name."""
    digest = hashlib.blake2b(img.embedded, digest_size=12).hexdigest()
    try:
        with Image.open(io.BytesIO(img.embedded)) as im:
            suffix = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif"}.get(im.format or "", ".png")
    except Exception:
        raise DataError(
            f"annotation file {img.source}: its imageData is not an image; save it again from LabelMe"
        ) from None
    target = cache_root() / "images" / digest / f"{_safe_stem(img.name)}{suffix}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, img.embedded)
    return target


@dataclass
class Resolved:
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (image name, note); "" for the whole file
    drawn: int = 0  # masks rasterised by this scan (the rest came from the cache)


def resolve(
    path: Path, labels: LabelMap | None, fmt: str | None = None, images: Path | None = None
) -> tuple[Resolved, AnnotationSet]:
    """(image, cached mask) pairs of an annotation source, drawing the masks not yet cached.
    Without `labels`, the classes are those `segtool init` would write for the file's labels."""
    found = read_annotations(path, fmt, images)
    labels = labels or default_map(found.labels)
    out = Resolved(problems=list(found.problems), notes=[("", n) for n in found.notes])
    root = cache_root()
    for img in found.images:
        image = img.image
        if image is None and img.embedded is not None:
            image = _embedded_image(img)
        if image is None:
            if img.problems:
                out.problems += img.problems[:1]
            else:
                where = images or path.parent
                out.problems.append(
                    f"image {img.name} named by {path} not found (looked under {where}); put it there "
                    "or set the split's `images` folder"
                )
            continue
        actual = _image_size(image)
        if actual is None:
            out.problems.append(f"image {image} cannot be read (not an image, or damaged); replace or remove it")
            continue
        if img.size is not None and img.size != actual:
            out.problems.append(
                f"{path} says image {img.name} is {img.size[0]}x{img.size[1]} but {image} is "
                f"{actual[0]}x{actual[1]} (HxW); annotate the image as it is, or fix the file's size"
            )
            continue
        h, w = actual
        key = hashlib.blake2b(
            b"%d|%s|%d|%d|" % (RASTER_VERSION, img.name.encode("utf-8", "surrogateescape"), h, w)
            + labels.key()
            + b"|"
            + img.material,
            digest_size=16,
        ).hexdigest()
        mask = root / key[:2] / f"{_safe_stem(img.name)}.{key[2:18]}.png"
        out.notes += [(img.name, n) for n in shape_notes(img, h, w)]
        if not mask.is_file():
            canvas, problems = rasterise(img, labels, h, w)
            if problems:
                more = f" [+{len(problems) - 1} more in this file]" if len(problems) > 1 else ""
                out.problems.append(problems[0] + more)
                continue
            mask.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(mask, cv2.imencode(".png", canvas)[1].tobytes())
            out.drawn += 1
        out.pairs.append((image, mask))
    return out, found


def split_labels(split: Any) -> LabelMap | None:
    """The label map an annotation split is bound to (pairs.bind_labels), or None."""
    data = getattr(split, "_data", None)
    return config_map(data) if data is not None else None


def resolve_split(split: Any) -> Resolved:
    labels = split_labels(split)
    resolved, _ = resolve(split.annotations, labels, split.annotation_format, split.images)
    return resolved


def annotation_pairs(split: Any, problems: list[str]) -> list[tuple[Path, Path]]:
    """scan_pairs for an annotation split: (image, cached mask) pairs; problems appended."""
    resolved = resolve_split(split)
    problems += resolved.problems
    return resolved.pairs


def annotation_notes(split: Any, limit: int = 10) -> list[str]:
    """What check-data warns about in a split's annotation files: shapes outside their image,
    files with no shapes, points (which mark no area) and other shapes drawn as nothing."""
    notes: list[str] = []
    for part in split.parts or (split,):
        if part.parts:
            notes += annotation_notes(part, limit)
        elif part.annotations is not None:
            notes += [n for name, n in resolve_split(part).notes if not name or part.keeps(Path(name))]
    if len(notes) > limit:
        notes = [*notes[:limit], f"... and {len(notes) - limit} more notes on the annotation files"]
    return notes
