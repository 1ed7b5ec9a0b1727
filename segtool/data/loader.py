"""DataLoaders: a resumable seeded sampler and a collate that pads and reports bad samples."""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), entered at any position.

    `set_epoch(e, start)` makes the next pass yield that epoch's permutation from `start`,
    which is how a resumed run continues mid-epoch with exactly the remaining samples.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.size - self.start


def pad_collate(ignore_index: int):
    """Stack samples of different sizes: images padded with 0, masks with the ignore index.

    Each sample's own image and mask sizes travel along so results can be cropped back;
    samples that failed to load travel as `errors` [(index, message)].
    """

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        errors = [(b["index"], b["error"]) for b in batch if "error" in b]
        batch = [b for b in batch if "error" not in b]
        if not batch:
            return {"errors": errors, "index": torch.zeros(0, dtype=torch.long)}
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
            "errors": errors,
        }

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
