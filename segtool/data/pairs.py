"""Finding image/mask pairs on disk: folder pairs by file stem, list files, unions with
include/exclude patterns. Torch-free, so the ONNX Runtime path can use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segtool.config import DataConfig, SplitSpec
from segtool.data.io import IMAGE_EXTS, read_image, read_mask
from segtool.errors import ConfigError, DataError

Pair = tuple[Path, Path]


def _files_by_stem(folder: Path, what: str, problems: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            if p.stem in found:
                problems.append(f"{what} {found[p.stem].name} and {p.name} in {folder} share a name; keep one")
                continue
            found[p.stem] = p
    return found


def _folder_pairs(images: Path, masks: Path, problems: list[str]) -> list[Pair]:
    for folder, what in ((images, "images"), (masks, "masks")):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} not found; check the split's '{what}' in the config")
    imgs = _files_by_stem(images, "image", problems)
    msks = _files_by_stem(masks, "mask", problems)
    problems += [
        f"image {imgs[s]} has no mask in {masks}; add it or move the image out" for s in sorted(set(imgs) - set(msks))
    ]
    problems += [
        f"mask {msks[s]} has no image in {images}; add it or move the mask out" for s in sorted(set(msks) - set(imgs))
    ]
    return [(imgs[s], msks[s]) for s in sorted(imgs) if s in msks]


def _list_lines(list_file: Path) -> list[str]:
    """The lines of a list file, which must be UTF-8. A byte-order mark (Windows editors
    write one) is dropped: kept, it would be an invisible first character of the first path."""
    try:
        raw = list_file.read_bytes()
    except OSError as e:
        raise DataError(f"list file {list_file} cannot be read ({e.strerror}); check its permissions") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"list file {list_file} is UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"list file {list_file} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def _list_pairs(list_file: Path, problems: list[str]) -> list[Pair]:
    if not list_file.is_file():
        raise DataError(f"list file {list_file} not found; check the split's 'list' in the config")
    base = list_file.parent
    pairs: list[Pair] = []
    lines = _list_lines(list_file)
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.append(f"{list_file}:{n}: expected 'image_path mask_path', got {line!r}")
            continue
        img, mask = (Path(p) if Path(p).is_absolute() else base / p for p in parts)
        missing = [f"{what} {p}" for p, what in ((img, "image"), (mask, "mask")) if not p.is_file()]
        if missing:
            problems.append(f"{list_file}:{n}: {' and '.join(missing)} not found; fix the path (relative to {base})")
            continue
        pairs.append((img, mask))
    return pairs


def bind_labels(split: SplitSpec, data: DataConfig) -> SplitSpec:
    """`split`, with its annotation parts drawn with the classes of `data` (rather than the
    classes `segtool init` would write for their labels)."""
    if split.parts:
        bound = split.model_copy(update={"parts": tuple(bind_labels(p, data) for p in split.parts)})
    elif split.annotations is not None:
        if data.has_values or data.mask_format == "rgb" or data.reduce_zero_label:
            raise ConfigError(
                f"split {split.describe()} is drawn from annotations into class indices; drop the classes' "
                "`value`s, data.mask_format: rgb and data.reduce_zero_label, which describe mask files"
            )
        bound = split.model_copy()
    else:
        return split
    bound._data = data if data.classes else None
    return bound


def scan_pairs(split: SplitSpec) -> tuple[list[Pair], list[str]]:
    """The usable (image, mask) pairs of a split, and one message per unusable entry."""
    problems: list[str] = []
    if split.annotations is not None:
        from segtool.data.annotations import annotation_pairs

        pairs = annotation_pairs(split, problems)
    elif split.parts:
        pairs = []
        for part in split.parts:
            found, trouble = scan_pairs(part)
            pairs += found
            problems += trouble
    elif split.list:
        pairs = _list_pairs(split.list, problems)
    else:
        pairs = _folder_pairs(split.images, split.masks, problems)
    return [p for p in pairs if split.keeps(p[0])], problems


def raise_first(problems: list[str], hint: str = "") -> None:
    if problems:
        more = f" [+{len(problems) - 1} more{hint}]" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)


def scan_nonempty(split: SplitSpec) -> tuple[list[Pair], list[str]]:
    """scan_pairs, but a split with no usable pair at all is an error: evaluation reports
    and skips bad entries, yet has nothing to score without a single good one."""
    pairs, problems = scan_pairs(split)
    if not pairs:
        raise_first(problems)
        raise DataError(f"split {split.describe()} holds no image/mask pairs; add data or fix the path")
    return pairs, problems


def find_pairs(split: SplitSpec, name: str = "split") -> list[Pair]:
    """All (image, mask) pairs of a split; raises if any file is unpaired or missing."""
    pairs, problems = scan_pairs(split)
    raise_first(problems, "; segtool check-data lists them all")
    if not pairs:
        raise DataError(f"{name} split {split.describe()} holds no image/mask pairs; add data or fix the path")
    return pairs


def size_mismatch(image: Path, mask: Path, image_hw: tuple[int, int], mask_hw: tuple[int, int]) -> str:
    return (
        f"mask {mask} is {mask_hw[0]}x{mask_hw[1]} but image {image} is {image_hw[0]}x{image_hw[1]} (HxW); "
        "masks must match their images"
    )


def read_pair(pair: Pair, data: DataConfig, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pair's RGB image and its mask as `data` says masks are read (or `mask`, when it was
    decoded already); DataError when either cannot be read or their sizes differ."""
    img_path, mask_path = pair
    image = read_image(img_path)
    mask = read_mask(mask_path, data) if mask is None else mask
    if image.shape[:2] != mask.shape:
        raise DataError(size_mismatch(img_path, mask_path, image.shape[:2], mask.shape))
    return image, mask


def config_split(data: DataConfig, name: str) -> SplitSpec:
    """The config's `train` or `val` split, generating the built-in dataset if that is the source."""
    spec = getattr(data, name)
    if spec is not None:
        return bind_labels(spec, data)
    if data.synthetic is not None:
        from segtool.data.synthetic import synthetic_split

        return synthetic_split(data.synthetic, name)
    raise DataError(
        f"data.{name} is not set; give a list file or an images/masks folder pair (see configs/default.yaml)"
    )
