"""Training's DataLoader: a resumable seeded sampler and a collate that pads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (a per-epoch shuffle of (seed, epoch); each of `world`
    processes takes its own equal share), entered at any position.

    `set_epoch(e, start)` makes the next pass yield this process's share of that epoch
    from `start`, which is how a resumed run continues mid-epoch with exactly the
    remaining samples. A world of one takes the whole permutation.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def pad_collate(ignore_index: int):
    """Stack samples of different sizes: images padded with 0, masks with the ignore index
    (a training crop usually makes them one size; a pipeline without one may not)."""

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        ih = max(b["image"].shape[1] for b in batch)
        iw = max(b["image"].shape[2] for b in batch)
        images = torch.stack(
            [F.pad(b["image"], (0, iw - b["image"].shape[2], 0, ih - b["image"].shape[1])) for b in batch]
        )
        masks = torch.stack(
            [
                F.pad(b["mask"], (0, iw - b["mask"].shape[1], 0, ih - b["mask"].shape[0]), value=ignore_index)
                for b in batch
            ]
        )
        return {"image": images, "mask": masks, "index": torch.tensor([b["index"] for b in batch])}

    return collate


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int,
    ignore_index: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=pad_collate(ignore_index),
        drop_last=drop_last,
        persistent_workers=False,
    )
