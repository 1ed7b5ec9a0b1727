"""The built-in dataset: coloured shapes on textured backgrounds.

It lets the quickstart and the tests run with no download. Each class has its own shape
and a hue family, with enough colour and texture noise that a model has to learn both.
Generated once per spec into the cache folder, atomically (a half-written copy is never
used).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from segtool.config import SYNTHETIC_CLASSES, SplitSpec, SyntheticSpec


def cache_dir() -> Path:
    return Path(os.environ.get("SEGTOOL_CACHE") or Path.home() / ".cache" / "segtool")


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(20, 110, size=3)
    coarse = rng.normal(0, 25, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img = base + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:  # stripes, so "background" is not just "smooth"
        period = rng.integers(6, 20)
        img += (np.sin(np.arange(w) * 2 * np.pi / period) * 12)[None, :, None]
    return img


def _sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    img = _texture(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        colour = np.clip(np.array(SYNTHETIC_CLASSES[cls][1]) + rng.integers(-50, 51, size=3), 0, 255)
        size = int(rng.integers(min(h, w) // 8, min(h, w) // 3))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        shape = np.zeros((h, w), np.uint8)
        if cls == 1:
            cv2.circle(shape, (cx, cy), size, 1, -1)
        elif cls == 2:
            cv2.rectangle(shape, (cx - size, cy - size // 2), (cx + size, cy + size // 2), 1, -1)
        else:
            pts = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
            cv2.fillPoly(shape, [pts], 1)
        on = shape.astype(bool)
        img[on] = colour
        mask[on] = cls
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_split(root: Path, rng: np.random.Generator, n: int, h: int, w: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, mask = _sample(rng, h, w)
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)


def generate(spec: SyntheticSpec, dest: Path) -> None:
    """Write `dest/train` and `dest/val` (images/ + masks/ folders) for `spec`."""
    rng = np.random.default_rng(spec.seed)
    _write_split(dest / "train", rng, spec.num_train, spec.height, spec.width)
    _write_split(dest / "val", rng, spec.num_val, spec.height, spec.width)


def ensure_synthetic(spec: SyntheticSpec) -> Path:
    """Folder of the generated dataset for `spec`, generating it on first use."""
    name = f"synthetic-v1-{spec.num_train}-{spec.num_val}-{spec.height}x{spec.width}-s{spec.seed}"
    final = cache_dir() / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        generate(spec, tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent run winning the rename is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def synthetic_split(spec: SyntheticSpec, split: str) -> SplitSpec:
    root = ensure_synthetic(spec) / split
    return SplitSpec(images=root / "images", masks=root / "masks")
