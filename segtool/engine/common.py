"""Pieces every engine function needs: device choice and eval-time data."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from segtool.config import Config
from segtool.data.datasets import SegDataset
from segtool.data.pairs import Pair
from segtool.data.loader import ShardSampler, build_loader
from segtool.data.transforms import build_eval_transform
from segtool.errors import ConfigError, SegtoolError


DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """The device `name` (auto, cpu or cuda) asks for on this machine. It is always a
    choice made where the command runs (`key` names the setting that made it): a
    checkpoint never decides, so a model trained on a GPU predicts on a laptop."""
    if name not in DEVICES:
        raise ConfigError(f"{key} {name!r}: use one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegtoolError(f"{key} is 'cuda' but no CUDA GPU is available on this machine; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def layout(cfg: Config) -> torch.memory_format:
    """The memory layout a model and its input use, as it was trained (train.channels_last:
    NHWC, about 1.3x faster on CPUs)."""
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


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
