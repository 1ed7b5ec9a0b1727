"""DataLoaders: seeded shuffling, seeded augmentation per worker, and a padding collate."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


def pad_collate(ignore_index: int):
    """Stack samples of different sizes: images padded with 0, masks with the ignore index.

    Each sample's own image and mask sizes travel along so results can be cropped back.
    """

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ih = max(b["image"].shape[1] for b in batch)
        iw = max(b["image"].shape[2] for b in batch)
        mh = max(b["mask"].shape[0] for b in batch)
        mw = max(b["mask"].shape[1] for b in batch)
        images = torch.stack(
            [F.pad(b["image"], (0, iw - b["image"].shape[2], 0, ih - b["image"].shape[1])) for b in batch]
        )
        masks = torch.stack(
            [
                F.pad(b["mask"], (0, mw - b["mask"].shape[1], 0, mh - b["mask"].shape[0]), value=ignore_index)
                for b in batch
            ]
        )
        return {
            "image": images,
            "mask": masks,
            "image_size": torch.tensor([tuple(b["image"].shape[1:]) for b in batch]),
            "mask_size": torch.tensor([tuple(b["mask"].shape) for b in batch]),
            "index": torch.tensor([b["index"] for b in batch]),
        }

    return collate


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive the augmentation RNG from it
    # so every epoch and worker draws different, yet reproducible, augmentations.
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    ignore_index: int,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=pad_collate(ignore_index),
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
    )
