"""Image/mask pairs (found by segtool.data.pairs) served as a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segtool.config import DataConfig
from segtool.data.io import read_image, read_mask
from segtool.data.pairs import Pair, config_split, size_mismatch  # noqa: F401  (config_split: re-exported)
from segtool.data.transforms import seed_transform
from segtool.errors import DataError


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
        self,
        pairs: list[Pair],
        data: DataConfig,
        transform: Callable,
        image_only: bool = False,
        skip_errors: bool = False,
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


def require_classes(data: DataConfig) -> None:
    if not data.classes:
        raise DataError("data.classes is empty; list each class as {name: ..., color: [r, g, b]} in the config")
