"""Finding image/mask pairs on disk and serving them as a torch Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from segtool.config import DataConfig, SplitSpec
from segtool.data.io import IMAGE_EXTS, read_image, read_mask
from segtool.data.transforms import seed_transform
from segtool.errors import DataError

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
    problems += [f"image {imgs[s]} has no mask in {masks}; add it or move the image out" for s in sorted(set(imgs) - set(msks))]
    problems += [f"mask {msks[s]} has no image in {images}; add it or move the mask out" for s in sorted(set(msks) - set(imgs))]
    return [(imgs[s], msks[s]) for s in sorted(imgs) if s in msks]


def _list_pairs(list_file: Path, problems: list[str]) -> list[Pair]:
    if not list_file.is_file():
        raise DataError(f"list file {list_file} not found; check the split's 'list' in the config")
    base = list_file.parent
    pairs: list[Pair] = []
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"list file {list_file} cannot be read ({e}); it must be UTF-8 text") from None
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


def scan_pairs(split: SplitSpec) -> tuple[list[Pair], list[str]]:
    """The usable (image, mask) pairs of a split, and one message per unusable entry."""
    problems: list[str] = []
    if split.parts:
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


class SegDataset(Dataset):
    """(image, mask) pairs -> {"image": float CHW, "mask": long HW, "index": int}.

    `transform` is an albumentations pipeline applied to image and mask together.
    With `image_only` (evaluation) the mask keeps its native size so metrics are computed
    at the resolution the labels were made at. With `skip_errors` an unreadable pair
    becomes {"error": message, "index": i} for the caller to report and skip.

    Setting `aug_seed` (e.g. [seed, epoch]) makes each sample's augmentation a function of
    (aug_seed, index) alone: the same whatever the worker count, order or resume point.
    """

    def __init__(
        self, pairs: list[Pair], data: DataConfig, transform: Callable, image_only: bool = False, skip_errors: bool = False
    ):
        self.pairs = pairs
        self.data = data
        self.transform = transform
        self.image_only = image_only
        self.skip_errors = skip_errors
        self.aug_seed: list[int] | None = None
        self._decoded: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def preload(self) -> None:
        """Decode every pair once into memory (`data.cache`). Done in the main process, so
        loader workers forked afterwards share the arrays instead of decoding again."""
        self._decoded = [self.load(i) for i in range(len(self))]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._decoded is not None:
            return self._decoded[i]
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path)
        mask = read_mask(mask_path, self.data)
        if image.shape[:2] != mask.shape:
            raise DataError(size_mismatch(img_path, mask_path, image.shape[:2], mask.shape))
        return image, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image, mask = self.load(i)
        except DataError as e:
            if not self.skip_errors:
                raise
            return {"error": e.one_line(), "index": i}
        if self.aug_seed is not None:
            seed_transform(self.transform, [*self.aug_seed, i])
        if self.image_only:
            out = self.transform(image=image)
            target = torch.from_numpy(mask)
        else:
            out = self.transform(image=image, mask=mask)
            target = out["mask"]
        return {"image": out["image"], "mask": target.long(), "index": i}


def config_split(data: DataConfig, name: str) -> SplitSpec:
    """The config's `train` or `val` split, generating the built-in dataset if that is the source."""
    spec = getattr(data, name)
    if spec is not None:
        return spec
    if data.synthetic is not None:
        from segtool.data.synthetic import synthetic_split

        return synthetic_split(data.synthetic, name)
    raise DataError(f"data.{name} is not set; give a list file or an images/masks folder pair (see configs/default.yaml)")


def require_classes(data: DataConfig) -> None:
    if not data.classes:
        raise DataError("data.classes is empty; list each class as {name: ..., color: [r, g, b]} in the config")
