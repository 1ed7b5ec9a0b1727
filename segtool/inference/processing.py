"""The one way an image becomes model input and logits become a class map, for every
backend: PyTorch evaluation and prediction, ONNX Runtime, and export's checks.

Torch-free on purpose: the ONNX Runtime path runs without importing torch.

- `preprocess`: HxWx3 uint8 RGB -> 3xhxw float32, resized to the eval size when the
  config sets one, normalised with the config's mean and std.
- `run_batched`: stacks only inputs of the same shape. Nothing is padded, so a
  prediction never depends on which other images share its batch (LR-ASPP's global
  pooling, and every border, would see the padding).
- `postprocess`: logits resized back to the image's own size (bilinear, as
  F.interpolate with align_corners=False), then the arg-max class and, when asked for,
  its softmax probability (the confidence map).
- `tiled_maps`: for images above the tiling threshold, a sliding window of
  overlapping tiles whose logits are summed where they overlap. Only one band of tile
  rows is held at a time, so memory stays bounded whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A 3xHxW float32 array of an HxWx3 uint8 RGB image: (pixel - 255 mean) / (255 std) per
    channel. The only normalisation in segtool: training calls it as the last step of its
    augmentations (segtool.data.transforms.Normalise) and every backend through
    `preprocess`. By lookup table, with albumentations' own arithmetic (float32 255 mean and
    1 / (255 std)), so the built-in models, trained with albumentations' Normalize, see the
    same numbers to the bit; as fast as multiplying plane by plane."""
    m = np.asarray(mean, np.float32) * np.float32(255.0)
    d = np.reciprocal(np.asarray(std, np.float32) * np.float32(255.0))
    luts = (np.arange(256, dtype=np.float32)[None] - m[:, None]) * d[:, None]
    out = np.empty((3, *image.shape[:2]), np.float32)
    for c, plane in enumerate(cv2.split(image)):
        out[c] = cv2.LUT(plane, luts[c])
    return out


def preprocess(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], size: Sequence[int] | None
) -> np.ndarray:
    """A 3xhxw float32 array of an HxWx3 uint8 RGB image: resized to `size` (h, w) when
    given, then normalised (`normalise`)."""
    if size:
        h, w = size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return normalise(image, mean, std)


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


def argmax_max(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class map (HxW uint8) of (K, H, W) float32 logits, as `logits.argmax(0)` gives it
    (the first class wins a tie), and the winning logit per pixel. 9x faster than numpy on
    one core for CamVid-sized maps, where numpy's reduction over the outermost axis cost
    half as much as running the model."""
    best = logits[0].copy()
    classes = np.zeros(best.shape, np.uint8)
    fill = np.empty_like(classes)
    for c in range(1, len(logits)):
        better = cv2.compare(logits[c], best, cv2.CMP_GT)  # 255 where class c beats all before it
        cv2.max(logits[c], best, dst=best)
        fill[:] = c
        cv2.copyTo(fill, better, classes)
    return classes, best


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """Class map (HxW uint8) of (K, H, W) float32 logits: what `logits.argmax(0)` gives."""
    return argmax_max(logits)[0]


def top_probability(logits: np.ndarray, best: np.ndarray) -> np.ndarray:
    """The softmax probability of the winning class per pixel (HxW float32) of (K, H, W)
    logits whose per-pixel maximum is `best`: 1 / sum_k exp(l_k - max), which never
    overflows and needs no KxHxW temporary."""
    total = np.zeros(best.shape, np.float32)
    for plane in logits:
        total += cv2.exp(cv2.subtract(plane, best))
    return cv2.divide(1.0, total)


@dataclass(frozen=True)
class Maps:
    """What a model decided for one image, at the image's own size: the class map (HxW
    uint8) and, when asked for, the top class's probability per pixel (HxW float32)."""

    classes: np.ndarray
    confidence: np.ndarray | None = None
    # With `offsets` (train.loss.calibrate's candidate per-class logit offsets): the class
    # map of the logits plus each offset, from the same forward pass (a zero offset is
    # `classes` itself).
    offset_classes: tuple[np.ndarray, ...] = ()


def decide(logits: np.ndarray, confidence: bool = False) -> Maps:
    """Maps of (K, H, W) logits already at the image's size."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    classes, best = argmax_max(logits)
    return Maps(classes, top_probability(logits, best) if confidence else None)


def resize_logits(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(K, h, w) logits bilinearly resized to `size` (H, W), pixel centres aligned."""
    h, w = int(size[0]), int(size[1])
    if logits.shape[1:] == (h, w):
        return logits
    planes = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    # OpenCV resizes at most 512 channels at once; one class map more than that is rare.
    chunks = [
        cv2.resize(planes[..., i : i + 512], (w, h), interpolation=cv2.INTER_LINEAR) for i in range(0, len(logits), 512)
    ]
    chunks = [c.reshape(h, w, -1) for c in chunks]  # OpenCV drops a channel axis of one
    return np.concatenate(chunks, axis=2).transpose(2, 0, 1)


def postprocess(logits: np.ndarray, size: Sequence[int], confidence: bool = False) -> Maps:
    """The maps, at the image's own `size` (H, W), of one image's (K, h, w) float32 logits:
    resized (bilinear), then the arg-max class and, with `confidence`, its probability."""
    return decide(resize_logits(logits, size), confidence)


@dataclass(frozen=True)
class Tiling:
    """When and how to predict by tiles: images of more than `above` pixels (None: never,
    0: always) go through windows of `size` (h, w) overlapping by `overlap` pixels."""

    size: tuple[int, int] = (512, 512)
    overlap: int = 64
    above: int | None = 4_000_000

    def applies(self, h: int, w: int) -> bool:
        return self.above is not None and h * w > self.above

    def forced(self, on: bool | None) -> Tiling:
        """This tiling with --tile (always) or --no-tile (never) applied; None keeps it."""
        return self if on is None else Tiling(self.size, self.overlap, 0 if on else None)


def tiling_of(data) -> Tiling:
    """The tiling a DataConfig (or an exported model's metadata dict) describes."""
    get = data.get if isinstance(data, dict) else lambda k, d=None: getattr(data, k, d)
    default = Tiling()
    return Tiling(
        tuple(get("tile_size", default.size)), get("tile_overlap", default.overlap), get("tile_above", default.above)
    )


@dataclass(frozen=True)
class InputSpec:
    """How a model's input is made and its output read, whichever backend runs it: what
    a checkpoint's config or an exported file's metadata says."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_size: tuple[int, int] | None
    tiling: Tiling


def input_spec(data, tile: bool | None = None) -> InputSpec:
    """The InputSpec of a DataConfig; `tile` forces tiling on or off (None: data.tile_above)."""
    size = tuple(data.eval_size) if data.eval_size else None
    return InputSpec(data.num_classes, tuple(data.mean), tuple(data.std), size, tiling_of(data).forced(tile))  # type: ignore[arg-type]


def predict_maps(
    images: Sequence[np.ndarray],
    run: Callable[[np.ndarray], np.ndarray],
    spec: InputSpec,
    confidence: bool = False,
    offsets: Sequence[np.ndarray] = (),
) -> list[Maps]:
    """Each image's maps, whatever runs the model (`run`: NCHW float32 -> NKhw logits):
    large images by tiles (unless an eval size resizes them), the rest whole, batched
    only with images of their own size. With `offsets`, also the class map of the logits
    plus each (K,) offset (Maps.offset_classes): evaluation scores calibration's
    candidates from one forward pass per image (tiled images take one more per non-zero
    offset)."""
    out: list[Maps | None] = [None] * len(images)
    whole = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if spec.eval_size or not spec.tiling.applies(h, w):
            whole.append(i)
            continue
        window = lambda y, x, th, tw, img=img: preprocess(img[y : y + th, x : x + tw], spec.mean, spec.std, None)  # noqa: E731

        def tiled(fn: Callable[[np.ndarray], np.ndarray], confidence: bool = False, h=h, w=w, window=window) -> Maps:
            return tiled_maps(
                (h, w), spec.num_classes, window, fn, spec.tiling.size, spec.tiling.overlap, confidence=confidence
            )

        maps = tiled(run, confidence)
        shifted = tuple(
            tiled(lambda b, s=s: run(b) + s[None, :, None, None]).classes if s.any() else maps.classes for s in offsets
        )
        out[i] = Maps(maps.classes, maps.confidence, shifted)
    inputs = [preprocess(images[i], spec.mean, spec.std, spec.eval_size) for i in whole]
    for i, logits in zip(whole, run_batched(inputs, run)):
        size = images[i].shape[:2]
        maps = postprocess(logits, size, confidence)
        shifted = tuple(
            postprocess(logits + s[:, None, None], size).classes if s.any() else maps.classes for s in offsets
        )
        out[i] = Maps(maps.classes, maps.confidence, shifted)
    return out  # type: ignore[return-value]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: `tile` long, stepping `tile - overlap`, the last one
    flush with the end, so every pixel is covered and no tile hangs over the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tiled_maps(
    shape: tuple[int, int],
    num_classes: int,
    get_tile: Callable[[int, int, int, int], np.ndarray],
    run: Callable[[np.ndarray], np.ndarray],
    tile: Sequence[int],
    overlap: int,
    batch: int = 4,
    confidence: bool = False,
) -> Maps:
    """The maps of an image of `shape` (H, W) predicted tile by tile.

    `get_tile(y, x, h, w)` gives the preprocessed 3xhxw input of that window and `run`
    the NKhw logits of a stack of them. Where tiles overlap their logits are summed (the
    arg-max of the sum is that of the mean; the confidence is the softmax of the mean),
    and rows are decided as soon as no later tile reaches them: memory holds
    K x tile-height x W logits, not K x H x W."""
    h, w = shape
    th, tw = min(tile[0], h), min(tile[1], w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    out = np.empty((h, w), np.uint8)
    conf = np.empty((h, w), np.float32) if confidence else None
    acc = np.zeros((num_classes, th, w), np.float32)
    count = np.zeros((th, w), np.float32)  # tiles summed into each pixel of acc
    top = 0  # the image row that acc's first row stands for

    def decide_rows(rows: int) -> None:
        part = np.ascontiguousarray(acc[:, :rows])
        out[top : top + rows], best = argmax_max(part)
        if conf is not None:
            n = count[:rows]
            conf[top : top + rows] = top_probability(part / n, best / n)

    for y in ys:
        if y > top:  # rows above y get no more tiles
            shift = y - top
            decide_rows(shift)
            acc[:, : th - shift] = acc[:, shift:]
            acc[:, th - shift :] = 0
            count[: th - shift] = count[shift:]
            count[th - shift :] = 0
            top = y
        for i in range(0, len(xs), batch):
            chunk = xs[i : i + batch]
            logits = run(np.stack([get_tile(y, x, th, tw) for x in chunk]))
            for x, lg in zip(chunk, logits):
                acc[:, :, x : x + tw] += lg
                count[:, x : x + tw] += 1
    decide_rows(h - top)
    return Maps(out, conf)
