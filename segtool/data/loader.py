"""DataLoaders: a resumable seeded sampler and a collate that pads and reports bad samples."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from segtool.config import Config
from segtool.data.datasets import SegDataset
from segtool.data.pairs import Pair
from segtool.data.transforms import build_eval_transform


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


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: every sample on exactly one process, none
    repeated, so metrics summed over processes equal one process's over the whole split."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = range(rank, size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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


def eval_workers() -> int:
    """Loader processes for evaluation on this machine: two read ahead while the model
    runs, unless there is only one core to share."""
    return 2 if (os.cpu_count() or 1) > 1 else 0


def eval_loader(
    cfg: Config,
    pairs: list[Pair],
    *,
    batch_size: int,
    workers: int,
    skip_errors: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Unaugmented, unshuffled batches of a split's `pairs` (of this process's share, when
    `world` processes evaluate together); with `skip_errors` broken pairs are reported in
    each batch's `errors` instead of stopping the run. `batch_size` and `workers` belong
    to the machine that evaluates, never to the checkpoint's training run."""
    dataset = SegDataset(pairs, cfg.data, build_eval_transform(cfg), image_only=True, skip_errors=skip_errors)
    sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
    return build_loader(dataset, batch_size, workers=workers, ignore_index=cfg.data.ignore_index, sampler=sampler)
