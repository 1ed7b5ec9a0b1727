"""Finding image/mask pairs on disk and serving them as a torch Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from segtool.config import DataConfig, SplitSpec
from segtool.data.io import IMAGE_EXTS, read_image, read_mask
from segtool.errors import DataError

Pair = tuple[Path, Path]


def _files_by_stem(folder: Path, what: str, key: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} not found; check {key} in the config")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            if p.stem in found:
                raise DataError(f"{what} {found[p.stem].name} and {p.name} in {folder} share a name; keep one")
            found[p.stem] = p
    return found


def _require_partners(ours: dict[str, Path], theirs: dict[str, Path], what: str, partner: str, where: Path) -> None:
    alone = sorted(set(ours) - set(theirs))
    if alone:
        more = f" [+{len(alone) - 1} more]" if len(alone) > 1 else ""
        raise DataError(
            f"{what} {ours[alone[0]]} has no {partner} in {where}{more}; add the {partner}s or move the {what}s out"
        )


def _folder_pairs(images: Path, masks: Path) -> list[Pair]:
    imgs = _files_by_stem(images, "images", "the split's 'images'")
    msks = _files_by_stem(masks, "masks", "the split's 'masks'")
    _require_partners(imgs, msks, "image", "mask", masks)
    _require_partners(msks, imgs, "mask", "image", images)
    return [(imgs[s], msks[s]) for s in sorted(imgs)]


def _list_pairs(list_file: Path) -> list[Pair]:
    if not list_file.is_file():
        raise DataError(f"list file {list_file} not found; check the split's 'list' in the config")
    base = list_file.parent
    pairs: list[Pair] = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{list_file}:{n}: expected 'image_path mask_path', got {line!r}")
        img, mask = (Path(p) if Path(p).is_absolute() else base / p for p in parts)
        for p, what in ((img, "image"), (mask, "mask")):
            if not p.is_file():
                raise DataError(f"{list_file}:{n}: {what} {p} not found; fix the path (relative to {base})")
        pairs.append((img, mask))
    return pairs


def find_pairs(split: SplitSpec, name: str = "split") -> list[Pair]:
    """All (image, mask) pairs of a split; raises if any file is unpaired or missing."""
    pairs = _list_pairs(split.list) if split.list else _folder_pairs(split.images, split.masks)
    if not pairs:
        raise DataError(f"{name} split {split.describe()} holds no image/mask pairs; add data or fix the path")
    return pairs


class SegDataset(Dataset):
    """(image, mask) pairs -> {"image": float CHW, "mask": long HW, "index": int}.

    `transform` is an albumentations pipeline applied to image and mask together.
    With `image_only_transform` (evaluation) the mask keeps its native size so metrics
    are computed at the resolution the labels were made at.
    """

    def __init__(self, pairs: list[Pair], data: DataConfig, transform: Callable, image_only: bool = False):
        self.pairs = pairs
        self.data = data
        self.transform = transform
        self.image_only = image_only

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path)
        mask = read_mask(mask_path, self.data)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but image {img_path} is "
                f"{image.shape[0]}x{image.shape[1]} (HxW); masks must match their images"
            )
        return image, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.load(i)
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
