"""The one way an image becomes model input and logits become a class map, for every
backend: PyTorch evaluation and prediction, ONNX Runtime, and export's checks.

Torch-free on purpose: the ONNX Runtime path runs without importing torch.

- `preprocess`: HxWx3 uint8 RGB -> 3xhxw float32, resized to the eval size when the
  config sets one, normalised with the config's mean and std.
- `run_batched`: stacks only inputs of the same shape. Nothing is padded, so a
  prediction never depends on which other images share its batch (LR-ASPP's global
  pooling, and every border, would see the padding).
- `postprocess`: logits resized back to the image's own size (bilinear, as
  F.interpolate with align_corners=False), then the arg-max class.
- `tiled_classes`: for images above the tiling threshold, a sliding window of
  overlapping tiles whose logits are summed where they overlap. Only one band of tile
  rows is held at a time, so memory stays bounded whatever the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np


def preprocess(image: np.ndarray, mean: Sequence[float], std: Sequence[float], size: Sequence[int] | None) -> np.ndarray:
    """A 3xhxw float32 array of an HxWx3 uint8 RGB image: resized to `size` (h, w) when
    given, then (pixel / 255 - mean) / std per channel."""
    if size:
        h, w = size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.empty((3, *image.shape[:2]), np.float32)
    # Plane by plane: 25x faster than broadcasting over HxWx3 and transposing, which cost
    # more than a quarter of the model's own time.
    for c, plane in enumerate(cv2.split(image)):
        np.multiply(plane, np.float32(1 / (255 * std[c])), out=out[c])
        out[c] -= np.float32(mean[c] / std[c])
    return out


def shape_groups(shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """Indices of equal shapes together, groups in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


def run_batched(inputs: Sequence[np.ndarray], run: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Each input's output from `run` (NCHW float32 in, NKHW out), which sees stacks of
    inputs of one shape only, so no input is ever padded to fit its neighbours."""
    out: list[np.ndarray | None] = [None] * len(inputs)
    for group in shape_groups([x.shape for x in inputs]):
        logits = run(np.stack([inputs[i] for i in group]))
        for i, lg in zip(group, logits):
            out[i] = lg
    return out  # type: ignore[return-value]


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """Class map (HxW uint8) of (K, H, W) float32 logits: what `logits.argmax(0)` gives (the
    first class wins a tie), 9x faster on one core for CamVid-sized maps, where numpy's
    reduction over the outermost axis cost half as much as running the model."""
    best = logits[0].copy()
    classes = np.zeros(best.shape, np.uint8)
    fill = np.empty_like(classes)
    for c in range(1, len(logits)):
        better = cv2.compare(logits[c], best, cv2.CMP_GT)  # 255 where class c beats all before it
        cv2.max(logits[c], best, dst=best)
        fill[:] = c
        cv2.copyTo(fill, better, classes)
    return classes


def resize_logits(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(K, h, w) logits bilinearly resized to `size` (H, W), pixel centres aligned."""
    h, w = int(size[0]), int(size[1])
    if logits.shape[1:] == (h, w):
        return logits
    planes = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    # OpenCV resizes at most 512 channels at once; one class map more than that is rare.
    chunks = [cv2.resize(planes[..., i : i + 512], (w, h), interpolation=cv2.INTER_LINEAR) for i in range(0, len(logits), 512)]
    chunks = [c.reshape(h, w, -1) for c in chunks]  # OpenCV drops a channel axis of one
    return np.concatenate(chunks, axis=2).transpose(2, 0, 1)


def postprocess(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The HxW uint8 class map, at the image's own `size` (H, W), of one image's (K, h, w)
    float32 logits."""
    return argmax_classes(np.ascontiguousarray(resize_logits(logits, size), dtype=np.float32))


@dataclass(frozen=True)
class Tiling:
    """When and how to predict by tiles: images of more than `above` pixels (None: never,
    0: always) go through windows of `size` (h, w) overlapping by `overlap` pixels."""

    size: tuple[int, int] = (512, 512)
    overlap: int = 64
    above: int | None = 4_000_000

    def applies(self, h: int, w: int) -> bool:
        return self.above is not None and h * w > self.above

    def forced(self, on: bool | None) -> "Tiling":
        """This tiling with --tile (always) or --no-tile (never) applied; None keeps it."""
        return self if on is None else Tiling(self.size, self.overlap, 0 if on else None)


def classes_of(
    image: np.ndarray, run: Callable[[np.ndarray], np.ndarray], num_classes: int, mean: Sequence[float],
    std: Sequence[float], eval_size: Sequence[int] | None, tiling: Tiling,
) -> np.ndarray | None:  # fmt: skip
    """The tiled class map of one HxWx3 uint8 image when `tiling` applies to it (and no
    eval_size resizes it), else None: the caller batches it whole."""
    h, w = image.shape[:2]
    if eval_size or not tiling.applies(h, w):
        return None
    return tiled_classes(
        (h, w), num_classes, lambda y, x, th, tw: preprocess(image[y : y + th, x : x + tw], mean, std, None), run,
        tiling.size, tiling.overlap,
    )  # fmt: skip


def tiling_of(data) -> Tiling:
    """The tiling a DataConfig (or an exported model's metadata dict) describes."""
    get = data.get if isinstance(data, dict) else lambda k, d=None: getattr(data, k, d)
    default = Tiling()
    return Tiling(tuple(get("tile_size", default.size)), get("tile_overlap", default.overlap), get("tile_above", default.above))


def predict_classes(
    images: Sequence[np.ndarray], run: Callable[[np.ndarray], np.ndarray], num_classes: int, mean: Sequence[float],
    std: Sequence[float], eval_size: Sequence[int] | None, tiling: Tiling,
) -> list[np.ndarray]:  # fmt: skip
    """Each image's HxW class map, whatever runs the model: large images by tiles, the rest
    whole, batched only with images of their own size."""
    out = [classes_of(img, run, num_classes, mean, std, eval_size, tiling) for img in images]
    whole = [i for i, o in enumerate(out) if o is None]
    inputs = [preprocess(images[i], mean, std, eval_size) for i in whole]
    for i, logits in zip(whole, run_batched(inputs, run)):
        out[i] = postprocess(logits, images[i].shape[:2])
    return out  # type: ignore[return-value]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: `tile` long, stepping `tile - overlap`, the last one
    flush with the end, so every pixel is covered and no tile hangs over the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tiled_classes(
    shape: tuple[int, int],
    num_classes: int,
    get_tile: Callable[[int, int, int, int], np.ndarray],
    run: Callable[[np.ndarray], np.ndarray],
    tile: Sequence[int],
    overlap: int,
    batch: int = 4,
) -> np.ndarray:
    """The HxW uint8 class map of an image of `shape` (H, W) predicted tile by tile.

    `get_tile(y, x, h, w)` gives the preprocessed 3xhxw input of that window and `run`
    the NKhw logits of a stack of them. Where tiles overlap their logits are summed (the
    arg-max of the sum is that of the mean), and rows are decided as soon as no later
    tile reaches them: memory holds K x tile-height x W logits, not K x H x W."""
    h, w = shape
    th, tw = min(tile[0], h), min(tile[1], w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    out = np.empty((h, w), np.uint8)
    acc = np.zeros((num_classes, th, w), np.float32)
    top = 0  # the image row that acc's first row stands for

    def decide(rows: int) -> None:
        out[top : top + rows] = argmax_classes(np.ascontiguousarray(acc[:, :rows]))

    for y in ys:
        if y > top:  # rows above y get no more tiles
            shift = y - top
            decide(shift)
            acc[:, : th - shift] = acc[:, shift:]
            acc[:, th - shift :] = 0
            top = y
        for i in range(0, len(xs), batch):
            chunk = xs[i : i + batch]
            logits = run(np.stack([get_tile(y, x, th, tw) for x in chunk]))
            for x, lg in zip(chunk, logits):
                acc[:, :, x : x + tw] += lg
    decide(h - top)
    return out
