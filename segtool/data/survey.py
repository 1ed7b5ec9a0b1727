"""`segtool init`: look at a dataset as it comes and write the config that reads it.

The survey finds the splits (train/ and val/ folders, list files, or one images/masks
folder pair), the kind of mask (class indices, palette PNGs, colour-coded) and the values
or colours in them with their pixel shares, proposes a val split when there is none
(keeping files that share a prefix, such as a tile, patient or sequence, on one side),
and writes a commented config whose classes the user only has to rename.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segtool.config import SplitSpec
from segtool.data.io import check_pixels, label_values, orientation, upright
from segtool.data.pairs import Pair, scan_pairs
from segtool.errors import DataError

SAMPLE = 400  # masks read to find the values (all of them for a smaller dataset)
VAL_SHARE = 0.15
MAX_CLASSES = 255  # masks are 8-bit class maps
# A fallback palette for classes that come without colours (index masks).
PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
]


def _voc_colour(k: int) -> tuple[int, int, int]:
    """Colour k of the Pascal VOC colour map: 256 distinct colours from k's bits."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((k >> 0) & 1) << shift
        g |= ((k >> 1) & 1) << shift
        b |= ((k >> 2) & 1) << shift
        k >>= 3
    return r, g, b


# Past the palette, VOC's colours (less those already used): config load refuses two
# classes of one colour, so each of up to 255 classes needs its own.
_MORE = [c for c in map(_voc_colour, range(256)) if c not in PALETTE]


def class_colour(i: int) -> list[int]:
    """A colour for class i (0..254) that no other class gets."""
    return list(PALETTE[i] if i < len(PALETTE) else _MORE[i - len(PALETTE)])


@dataclass
class Survey:
    root: Path
    train: str  # split specs as they go into the YAML, relative to root
    val: str
    val_note: str
    mask_format: str  # index | rgb
    classes: list[dict] = field(default_factory=list)  # name, color, value (optional), share
    ignore_index: int = 255
    notes: list[str] = field(default_factory=list)


def _split_layout(root: Path) -> tuple[str | None, str | None]:
    """The train and val split specs the folder already has, as YAML strings."""

    def spec(name: str) -> str | None:
        if (root / name / "images").is_dir() and (root / name / "masks").is_dir():
            return name
        for suffix in (".txt", ".lst"):
            if (root / f"{name}{suffix}").is_file():
                return f"{name}{suffix}"
        return None

    train, val = spec("train"), spec("val") or spec("valid") or spec("validation")
    if train is None and (root / "images").is_dir() and (root / "masks").is_dir():
        train = "."
    return train, val


def group_of(name: str) -> str:
    """What ties files together (a tile, patient, sequence or video): the name up to its
    last run of digits, e.g. 0001TP_006690 -> 0001TP_, patient12_slice3 -> patient12_slice."""
    stem = Path(name).stem
    m = re.match(r"^(.*?)(\d+)\D*$", stem)
    return m.group(1) if m and m.group(1) else stem


def _literal(name: str) -> str:
    """A pattern that matches `name` only: *, ? and [ in a file name are not wildcards."""
    return re.sub(r"([*?[])", r"[\1]", name)


def _yaml(value: str | list[str]) -> str:
    """`value` as a YAML flow scalar or list that reads back exactly: double-quoted, with
    escapes for what UTF-8 text cannot hold as it is (a file name that is not UTF-8 keeps
    its undecodable bytes as \\uDCxx escapes, which read back as the same name) and for
    quotes, '#', newlines and the like."""
    return yaml.safe_dump(value, default_style='"', default_flow_style=True, allow_unicode=True, width=1 << 30).strip()


def _shown(text: str) -> str:
    """`text` for a comment: bytes that are not UTF-8 shown as U+FFFD (escapes do not
    work in comments, and the file must be UTF-8)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _propose_val(pairs: list[Pair]) -> tuple[list[str], str]:
    """Image-name patterns for a val split of about VAL_SHARE of the pairs, whole groups
    at a time, chosen evenly through the sorted groups (the same every time)."""
    groups = Counter(group_of(img.name) for img, _ in pairs)
    if len(groups) >= 3:
        names = sorted(groups)
        want, chosen, taken = VAL_SHARE * len(pairs), [], 0
        step = max(1, round(len(names) / max(1, round(len(names) * VAL_SHARE))))
        for g in names[step // 2 :: step]:
            if taken >= want:
                break
            chosen.append(g)
            taken += groups[g]
        return [
            f"{_literal(g)}*" for g in chosen
        ], f"{taken} pairs in {len(chosen)} of {len(groups)} name groups held out"
    # Too few groups to hold whole ones out: every k-th image instead.
    names = sorted(img.name for img, _ in pairs)
    k = max(2, round(1 / VAL_SHARE))
    chosen = names[k // 2 :: k]
    if len(chosen) == len(names):
        chosen = []  # survey refuses: no pair would be left to train on
    return [
        _literal(n) for n in chosen
    ], f"every {k}th image ({len(chosen)} pairs) held out: the names share no groups to keep apart"


def _mask_kind(masks: list[Path]) -> tuple[str, dict, str]:
    """(mask_format, {value or colour: pixels}, note) from a sample of masks."""
    modes = Counter()
    palettes = set()
    colours: Counter = Counter()
    values: Counter = Counter()
    for path in masks:
        try:
            with Image.open(path) as im:
                check_pixels(path, im, "mask")
                modes[im.mode] += 1
                orient = orientation(im)
                # As read_mask reads them: the alpha of a grey+alpha or palette+alpha mask is
                # no label, and 32-bit and float values must be whole numbers from 0.
                if im.mode in ("P", "PA"):
                    palettes.add(tuple(im.getpalette()[:768]))
                rgb = np.asarray(im.convert("RGB")) if im.mode in ("RGB", "RGBA", "P", "PA") else None
                raw = label_values(np.asarray(im), im.mode, path) if im.mode not in ("RGB", "RGBA") else None
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # unreadable or truncated: named, not a traceback
            raise DataError(f"mask {path} cannot be read ({e}); replace or remove it") from None
        if rgb is not None:
            rgb = upright(rgb, orient)
            codes, counts = np.unique(
                rgb.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1]), return_counts=True
            )
            colours.update(dict(zip(codes.tolist(), counts.tolist())))
        if raw is not None and raw.ndim == 2:
            v, c = np.unique(raw, return_counts=True)
            values.update(dict(zip(v.tolist(), c.tolist())))
    colour_masks = modes["RGB"] + modes["RGBA"]
    if colour_masks:
        grey = all(c >> 16 == (c >> 8) & 255 == c & 255 for c in colours)
        if not grey:
            return "rgb", dict(colours), f"colour-coded masks ({dict(modes)}): classes are colours"
        # Grey stored as RGB: the grey level is the class value.
        values = Counter({c & 255: n for c, n in colours.items()})
        return "index", dict(values), "RGB masks holding grey levels: the levels are the class values"
    if "PA" in modes:  # palette + alpha: a palette mask (its alpha is no label)
        modes["P"] += modes.pop("PA")
    if modes["P"] and len(palettes) > 1:
        return (
            "rgb",
            dict(colours),
            f"palette masks whose palettes differ between files ({len(palettes)} palettes): "
            "read through each file's palette, as colours",
        )
    if modes["P"]:
        return (
            "index",
            dict(values),
            "palette masks with one palette: the palette indices are the classes (as in Pascal VOC)",
        )
    return "index", dict(values), f"single-channel masks ({dict(modes)}): the values are the classes"


def survey(root: Path) -> Survey:
    root = Path(root).resolve()
    if root.is_file() or (root.is_dir() and _split_layout(root)[0] is None):
        from segtool.data.annotation_survey import annotation_survey  # COCO, LabelMe or CVAT exports

        found = annotation_survey(root)
        if found is not None:
            return found
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give the folder that holds images/ and masks/ (or train/ and val/)")
    train, val = _split_layout(root)
    if train is None:
        raise DataError(
            f"{root} holds neither images/ + masks/ nor train/ (with images/ and masks/) nor train.txt; "
            "arrange the data in one of those layouts (see the README's Datasets section)"
        )
    train_pairs, problems = scan_pairs(SplitSpec.model_validate(train).resolved(root))
    if not train_pairs:
        raise DataError(f"no image/mask pairs in {root / train}" + (f": {problems[0]}" if problems else ""))
    notes = [f"{len(problems)} unpaired or missing files: segtool check-data lists them"] if problems else []
    val_note = f"val: {val}"
    val_spec = f"'{val}'" if val else None
    too_few = False
    if val is None:
        patterns, why = _propose_val(train_pairs)
        source = (
            f"list: {train}" if train.endswith((".txt", ".lst")) else f"images: {train}/images, masks: {train}/masks"
        )
        val_spec = "{" + f"{source}, include: {_yaml(patterns)}" + "}"
        train_spec = "{" + f"{source}, exclude: {_yaml(patterns)}" + "}"
        val_note = f"no val split found: proposed one, {why}"
        too_few = not patterns  # an empty include would make val the whole train split
    else:
        train_spec = f"'{train}'"
    step = max(1, len(train_pairs) // SAMPLE)
    fmt, found, kind_note = _mask_kind([m for _, m in train_pairs[::step]])
    s = Survey(root, train_spec, val_spec, val_note, fmt, notes=[kind_note, *notes])
    total = sum(found.values()) or 1
    if len(found) > MAX_CLASSES:
        what = "colours" if fmt == "rgb" else "values"
        raise DataError(
            f"the masks in {root} hold {len(found)} distinct {what}, too many to be classes: masks saved as JPEG or "
            "resized with smoothing blend labels at every edge; save them as PNG with one value (or colour) per class"
        )
    if too_few:
        raise DataError(
            f"{len(train_pairs)} image/mask pair(s) are too few to hold a val split out of; add images, or give the "
            "folder train/ and val/ (each with images/ and masks/) or train.txt and val.txt"
        )
    if fmt == "rgb":
        for i, (code, n) in enumerate(sorted(found.items())):
            s.classes.append(
                {"name": f"class_{i}", "color": [code >> 16, (code >> 8) & 255, code & 255], "share": n / total}
            )
        return s
    vals = sorted(found)
    contiguous = vals == list(range(len(vals)))
    if not contiguous and 255 in vals and vals[:-1] == list(range(len(vals) - 1)) and len(vals) > 2:
        s.notes.append(
            f"value 255 ({100 * found[255] / total:.1f}% of pixels) is taken as 'ignore' (data.ignore_index)"
        )
        vals = vals[:-1]
        contiguous = True
    for i, v in enumerate(vals):
        entry = {"name": f"class_{i}", "color": class_colour(i), "share": found[v] / total}
        if not contiguous:
            entry["value"] = v
        s.classes.append(entry)
    if not contiguous:
        s.notes.append(f"stored values {vals} are not 0..{len(vals) - 1}: each class gets its `value`")
        s.ignore_index = 254 if 255 in vals else 255
        while s.ignore_index in vals:
            s.ignore_index -= 1
    return s


def config_text(s: Survey, name: str) -> str:
    """The commented YAML config of a survey."""
    lines = [
        f"# Written by `segtool init {_shown(str(s.root))}`: rename the classes, then `segtool train` this file.",
        "# Every other setting keeps its default (configs/default.yaml): `auto` ones are fitted to",
        "# the data when training starts and printed as `auto:` lines.",
        *[f"# {n}" for n in s.notes],
        f"# {s.val_note}",
        f"name: {_yaml(name)}",
        "data:",
        f"  root: {_yaml(str(s.root))}",
        f"  train: {s.train}",
        f"  val: {s.val}",
        f"  mask_format: {s.mask_format}",
    ]
    if s.ignore_index != 255:
        lines.append(
            f"  ignore_index: {s.ignore_index}   # the label of ignored pixels: 255 is a class's stored value here"
        )
    lines.append("  classes:                # share: of the pixels in the masks read")
    for c in s.classes:
        value = f", value: {c['value']}" if "value" in c else ""
        value += f", sources: {_yaml(c['sources'])}" if "sources" in c else ""  # annotation labels drawn as it
        lines.append(f"    - {{name: {c['name']}, color: {c['color']}{value}}}   # {100 * c['share']:.2f}%")
    return "\n".join(lines) + "\n"
