"""The training pipeline built from the config: albumentations steps on image and mask
together, then the one normalisation every backend shares (segtool.inference.processing)."""

from __future__ import annotations

import difflib
import inspect
import math
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

from segtool.config import Config
from segtool.errors import ConfigError
from segtool.inference.processing import normalise


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


class Normalise(A.ImageOnlyTransform):
    """segtool.inference.processing.normalise as the last albumentations step: the same
    function, so training and inference cannot drift apart. Hands ToTensorV2 an HxWx3 view
    of the 3xHxW result, which it turns back without a copy."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__(p=1.0)
        self.mean, self.std = tuple(mean), tuple(std)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return normalise(img, self.mean, self.std).transpose(1, 2, 0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std")


def normalize(cfg: Config) -> list[A.BasicTransform]:
    return [Normalise(cfg.data.mean, cfg.data.std), ToTensorV2()]


def build_train_transform(cfg: Config) -> A.Compose:
    steps = [
        _build_one(i, name, params, cfg.data.ignore_index)
        for i, item in enumerate(cfg.augment.train)
        for name, params in item.items()
    ]
    return A.Compose(steps + normalize(cfg))


# Crops that need an image at least their size: albumentations raises CropSizeError (or
# ValueError) at the first training step that gives them a smaller one, after the run has
# started. check_crops finds that from the image headers before the first step.
SIZED_CROPS = ("RandomCrop", "CenterCrop", "CropNonEmptyMaskIfExists", "Crop")
# Geometric transforms whose output has their input's size (with their default settings;
# the ones that can change it are looked at below).
_SAME_SIZE = {
    "HorizontalFlip",
    "VerticalFlip",
    "Rotate",
    "SafeRotate",
    "ShiftScaleRotate",
    "Affine",
    "Perspective",
    "ElasticTransform",
    "GridDistortion",
    "OpticalDistortion",
    "PiecewiseAffine",
    "ThinPlateSpline",
    "GridElasticDeform",
    "CoarseDropout",
    "ConstrainedCoarseDropout",
    "Erasing",
    "GridDropout",
    "MaskDropout",
    "PixelDropout",
    "XYMasking",
    "Morphological",
    "RandomGridShuffle",
    "NoOp",
}
_TURNS = {"RandomRotate90", "Transpose", "D4", "SquareSymmetry"}  # (h, w) may become (w, h)


def has_sized_crop(pipeline: Any) -> bool:
    """Whether an augment.train list holds a crop that needs images at least its size."""
    return isinstance(pipeline, list) and any(name in SIZED_CROPS for item in pipeline for name in item)


def _crop_size(t: A.BasicTransform) -> tuple[int, int] | None:
    """The (height, width) a sized crop needs its input to reach; None when it pads itself."""
    if getattr(t, "pad_if_needed", False):
        return None
    if isinstance(t, A.Crop):
        return t.y_max, t.x_max
    return t.height, t.width


def _reach(t: A.BasicTransform, size: tuple[int, int]) -> set[tuple[int, int]] | None:
    """The smallest sizes an image of `size` (height, width) can have after `t`, for the
    crop check: each size a lower bound of one way `t` can go. None: `t` may change sizes
    in ways not modelled here, and crops after it are left to albumentations."""
    h, w = size
    name = type(t).__name__
    if isinstance(t, A.ImageOnlyTransform) or name in _SAME_SIZE:
        if (
            getattr(t, "crop_border", False)
            or getattr(t, "fit_output", False)
            or getattr(t, "keep_size", True) is False
        ):
            return None
        return {size}
    if name in _TURNS:
        return {(w, h)} if name == "Transpose" and t.p >= 1 else {size, (w, h)}
    if name in SIZED_CROPS:
        if isinstance(t, A.Crop):
            return {(t.y_max - t.y_min, t.x_max - t.x_min)}
        return {(t.height, t.width)}
    if isinstance(t, A.PadIfNeeded):
        ph = (
            max(h, t.min_height)
            if t.min_height
            else math.ceil(h / (t.pad_height_divisor or 1)) * (t.pad_height_divisor or 1)
        )
        pw = (
            max(w, t.min_width)
            if t.min_width
            else math.ceil(w / (t.pad_width_divisor or 1)) * (t.pad_width_divisor or 1)
        )
        return {(ph, pw)}
    if isinstance(t, A.RandomScale):
        low = 1 + min(t.scale_limit)
        return {(max(1, int(h * low)), max(1, int(w * low)))}
    if isinstance(t, A.Resize):
        return {(t.height, t.width)}
    if isinstance(t, (A.RandomResizedCrop, A.RandomSizedCrop)):
        return {tuple(t.size)}
    if isinstance(t, (A.LongestMaxSize, A.SmallestMaxSize)) and t.max_size is not None:
        side = max(h, w) if isinstance(t, A.LongestMaxSize) else min(h, w)
        targets = t.max_size if isinstance(t.max_size, (list, tuple)) else [t.max_size]
        return {(max(1, round(h * m / side)), max(1, round(w * m / side))) for m in targets}
    return None


def crop_problem(cfg: Config, sizes: list[tuple[int, int]], paths: list[Path] | None = None) -> str | None:
    """The one-line problem of an augment.train crop larger than a training image can be
    when it reaches it (the image's own size, after the steps before the crop), or None.
    `sizes` are the training images' (height, width), `paths` the images (None: sizes only,
    as check-data's report has them)."""
    if not has_sized_crop(cfg.augment.train) or not sizes:
        return None
    steps = [
        (i, name, _build_one(i, name, params, cfg.data.ignore_index))
        for i, item in enumerate(cfg.augment.train)
        for name, params in item.items()
    ]
    first: dict[tuple[int, int], str] = {}
    for size, path in zip(sizes, paths or [None] * len(sizes)):
        first.setdefault(tuple(size), str(path) if path else "")
    reach = {size: {size} for size in first}  # the sizes each distinct image size can have so far
    for i, name, t in steps:
        if t.p <= 0:
            continue
        need = _crop_size(t) if name in SIZED_CROPS else None
        if need is not None:
            short = sorted((h * w, (h, w), s) for s, now in reach.items() for h, w in now if h < need[0] or w < need[1])
            if short:
                _, (h, w), s = short[0]
                smallest = min(first, key=lambda x: x[0] * x[1])
                fit = (
                    min(h for now in reach.values() for h, _ in now),
                    min(w for now in reach.values() for _, w in now),
                )
                named = f", {first[s]}" if first[s] else ""
                image = (
                    f"the smallest training image{named} ({s[0]}x{s[1]}"
                    if s == smallest
                    else f"a training image{named} ({s[0]}x{s[1]}; the smallest is {smallest[0]}x{smallest[1]}"
                )
                after = f"; {h}x{w} after the steps before it" if (h, w) != s else ""
                return (
                    f"augment.train[{i}]: {name} of {need[0]}x{need[1]} (height x width) "
                    f"is larger than {image}{after}); "
                    f"use a crop of at most {fit[0]}x{fit[1]}, or put PadIfNeeded: {{min_height: {need[0]}, "
                    f"min_width: {need[1]}}} before it"
                )
        nxt: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for s, now in reach.items():
            later: set[tuple[int, int]] = set()
            for size in now:
                went = _reach(t, size)
                if went is None:
                    return None  # sizes past this step are unknown: albumentations judges the rest
                later |= went
            nxt[s] = later | (now if t.p < 1 else set())  # a step that may not fire leaves sizes as they were
        reach = nxt
    return None


def check_crops(cfg: Config, sizes: list[tuple[int, int]], paths: list[Path] | None = None) -> None:
    """Raise ConfigError when an augment.train crop cannot fit a training image (crop_problem)."""
    problem = crop_problem(cfg, sizes, paths)
    if problem:
        raise ConfigError(problem)


def seed_transform(compose: A.Compose, entropy: list[int]) -> None:
    """Seed a pipeline so its draws depend only on `entropy` (e.g. seed, epoch, sample).

    Compose.set_random_seed hands every child the same seed, which makes e.g. a flip and a
    colour jitter with equal p fire together; each child gets its own stream here.
    """
    seeds = np.random.SeedSequence(entropy).generate_state(len(compose.transforms) + 1)
    compose.set_random_seed(int(seeds[0]))
    for t, s in zip(compose.transforms, seeds[1:]):
        t.set_random_seed(int(s))
