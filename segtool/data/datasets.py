"""Image/mask pairs (found by segtool.data.pairs) served as a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from segtool.config import DataConfig
from segtool.data.pairs import Pair, config_split, read_pair  # noqa: F401  (config_split: re-exported)
from segtool.data.transforms import seed_transform
from segtool.errors import DataError


class SegDataset(Dataset):
    """(image, mask) pairs -> {"image": float CHW, "mask": long HW, "index": int}.

    `transform` is the training pipeline (segtool.data.transforms), applied to image and
    mask together; validation only reads pairs through `load` (and its cache) and needs none.

    Setting `aug_seed` (e.g. [seed, epoch]) makes each sample's augmentation a function of
    (aug_seed, index) alone: the same whatever the worker count, order or resume point.
    """

    def __init__(
        self,
        pairs: list[Pair],
        data: DataConfig,
        transform: Callable | None = None,
    ):
        self.pairs = pairs
        self.data = data
        self.transform = transform
        self.aug_seed: list[int] | None = None
        self._decoded: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def preload(self, masks: dict[int, np.ndarray] | None = None) -> None:
        """Decode every pair once into memory (`data.cache`), taking the masks the run's scan
        already decoded (segtool.data.scan) from `masks`. Done in the main process, so loader
        workers forked afterwards share the arrays instead of decoding again."""
        masks = masks or {}
        self._decoded = [read_pair(pair, self.data, masks.get(i)) for i, pair in enumerate(self.pairs)]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair i's image and mask, decoded (or from the cache)."""
        if self._decoded is not None:
            return self._decoded[i]
        return read_pair(self.pairs[i], self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.load(i)
        if self.aug_seed is not None:
            seed_transform(self.transform, [*self.aug_seed, i])
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"].long(), "index": i}


def require_classes(data: DataConfig) -> None:
    if not data.classes:
        raise DataError("data.classes is empty; list each class as {name: ..., color: [r, g, b]} in the config")
