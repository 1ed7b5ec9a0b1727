"""Pieces every engine function needs: device choice and eval-time data."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from segtool.config import Config, SplitSpec
from segtool.data.datasets import SegDataset, find_pairs
from segtool.data.loader import ShardSampler, build_loader
from segtool.data.transforms import build_eval_transform
from segtool.errors import SegtoolError


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SegtoolError("train.device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def layout(cfg: Config) -> torch.memory_format:
    """The memory layout a model and its input use, as it was trained (train.channels_last:
    NHWC, about 1.3x faster on CPUs)."""
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def eval_loader(
    cfg: Config, split: SplitSpec, name: str = "val", skip_errors: bool = False, rank: int = 0, world: int = 1
) -> DataLoader:
    """Unaugmented, unshuffled batches of a split (of this process's share of it, when
    `world` processes evaluate together); with `skip_errors` broken pairs are reported in
    each batch's `errors` instead of stopping the run."""
    dataset = SegDataset(find_pairs(split, name), cfg.data, build_eval_transform(cfg), image_only=True, skip_errors=skip_errors)
    sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
    return build_loader(
        dataset, cfg.train.batch_size, workers=cfg.train.workers, ignore_index=cfg.data.ignore_index, sampler=sampler
    )
