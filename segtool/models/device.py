"""Where a model runs and in which memory layout: chosen on the machine that runs the
command, never read back from a checkpoint."""

from __future__ import annotations

import torch

from segtool.config import Config
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


def memory_format(cfg: Config) -> torch.memory_format:
    """The memory layout a model and its input use, as it was trained (train.channels_last:
    NHWC, about 1.3x faster on CPUs)."""
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format
