"""Albumentations pipelines built from the config: joint image+mask for training, resize for eval."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from segtool.config import Config
from segtool.data.processing import preprocess
from segtool.errors import ConfigError


def _transform_names() -> list[str]:
    return [n for n, obj in vars(A).items() if inspect.isclass(obj) and issubclass(obj, A.BasicTransform)]


def _build_one(i: int, name: str, params: dict[str, Any], ignore_index: int) -> A.BasicTransform:
    key = f"augment.train[{i}]"
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        hint = difflib.get_close_matches(name, _transform_names(), n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else "use an albumentations transform class name"
        raise ConfigError(f"{key}: unknown transform '{name}'; {fix}")
    # Padding must never invent labels: pad masks with the ignore index unless told otherwise.
    if "fill_mask" in inspect.signature(cls.__init__).parameters:
        params = {"fill_mask": ignore_index, **params}
    try:
        try:
            # strict: a misspelt parameter is an error, not a warning that scrolls past.
            return cls(**params, strict=True)
        except TypeError as e:
            if "'strict'" not in str(e):
                raise
            # a few transforms (RandomRotate90, MedianBlur, ...) have no parameter checks to make
            # strict; a wrong keyword still fails as a TypeError below
            return cls(**params)
    except Exception as e:  # albumentations reports bad params as TypeError/ValueError/ValidationError
        first = str(e).strip().splitlines()
        raise ConfigError(f"{key}: bad parameters for {name}: {' '.join(first[:3])}") from None


def normalize(cfg: Config) -> list[A.BasicTransform]:
    return [A.Normalize(mean=cfg.data.mean, std=cfg.data.std, max_pixel_value=255.0), ToTensorV2()]


def build_train_transform(cfg: Config) -> A.Compose:
    steps = [
        _build_one(i, name, params, cfg.data.ignore_index)
        for i, item in enumerate(cfg.augment.train)
        for name, params in item.items()
    ]
    return A.Compose(steps + normalize(cfg))


def seed_transform(compose: A.Compose, entropy: list[int]) -> None:
    """Seed a pipeline so its draws depend only on `entropy` (e.g. seed, epoch, sample).

    Compose.set_random_seed hands every child the same seed, which makes e.g. a flip and a
    colour jitter with equal p fire together; each child gets its own stream here.
    """
    seeds = np.random.SeedSequence(entropy).generate_state(len(compose.transforms) + 1)
    compose.set_random_seed(int(seeds[0]))
    for t, s in zip(compose.transforms, seeds[1:]):
        t.set_random_seed(int(s))


def build_eval_transform(cfg: Config) -> Callable[..., dict[str, torch.Tensor]]:
    """Image-only, called as `transform(image=...)` like an albumentations pipeline: the
    preprocessing every backend shares (segtool.data.processing). Labels stay at native
    size and predictions are resized back to them."""
    d = cfg.data

    def transform(*, image: np.ndarray) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(preprocess(image, d.mean, d.std, d.eval_size))}

    return transform
