"""Settings fitted to the data: what a config's "auto" values become when a run starts.

The defaults are the CamVid recipe's findings (docs/benchmarks.md), scaled to the data a
user brings, so a new dataset trains on a laptop CPU without hand tuning:

- `augment.train: auto`: random scale 0.55-1.1x, pad + random crop, flip, and a wide colour
  jitter and gamma (x0.6-1.4 brightness, contrast and saturation; gamma 0.6-1.6), so a
  model holds up in light it did not train in.
  The crop holds about 192x256 pixels (the recipe's: small crops give many optimizer steps
  per CPU-minute) in the shape of the median training image, and never exceeds it.
  When the masks have no up and down (see orientation_score: aerial and microscopy images,
  fundus photographs), every image also takes a random quarter turn before the crop, so
  with the flip the model sees all eight orientations.
- `model.head: auto`: LR-ASPP (the fastest head; its output has 1/8 of the input's
  resolution) unless a 1/8-resolution output could not reach FINE_HEAD_BELOW mIoU on the
  training masks even with every block right (see coarse_ceiling): then the U-Net head,
  whose output has 1/2. Retinal vessels are such data; road scenes are not. A run that
  starts from a checkpoint (`train.init_from`) takes that checkpoint's head.
- `train.loss.class_weights: auto`: 1/sqrt(pixel share of each class in the training
  masks), scaled to mean 1, so thin classes (poles, vessels, nuclei) are not drowned out.
- `train.epochs: auto`: about AUTO_STEPS optimizer steps (roughly half an hour on two
  cores at the auto crop); with `train.time_limit` the time limit alone sets the length.
- `train.val_every: auto`: validation costs at most about VAL_SHARE of the training time,
  judged from pixel counts, with at least 10 validations in a run of known length.
- `data.cache: auto`: decode every pair once when they fit in CACHE_BYTES.
- `train.workers: auto`: 0 with a cache (loader processes would only take cores from the
  model), else 2.
- `train.device: auto`: the GPU when CUDA has one (under torchrun, each rank's), else the CPU.

Every rule reads pixel counts and sizes, never the clock, so the same data and config give
the same settings on any machine. The resolved values are what the run folder's
config.yaml and the checkpoints record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import median

import cv2
import numpy as np
import torch

from segtool.config import Config, ResolvedConfig, resolved
from segtool.data.ignore_check import ignore_problem
from segtool.data.io import read_mask
from segtool.data.pairs import Pair
from segtool.data.scan import SplitScan
from segtool.data.transforms import check_crops
from segtool.errors import DataError

CROP_AREA = 192 * 256  # CamVid recipe's crop
SCALE_LIMIT = [-0.45, 0.1]  # random scale 0.55x..1.1x, the CamVid recipe's
AUTO_STEPS = 4000
TIME_LIMITED_EPOCHS = 100_000  # with train.time_limit and epochs: auto, no cap below the time
VAL_SHARE = 0.07
MIN_VALIDATIONS = 10
CACHE_BYTES = 2 * 1024**3
MIN_SHARE = 0.002  # class weights treat rarer classes as this common: at most ~22x the commonest
COARSE_STRIDE = 8  # LR-ASPP's output: 1/8 of the input's resolution
FINE_HEAD_BELOW = 0.70  # model.head: auto takes the U-Net head (output at 1/2) below this coarse ceiling
CEILING_MASKS = 200
BANDS = 8  # orientation_score compares the classes' shares in 8 horizontal bands with their mirror image
# Measured on the training masks (docs/benchmarks.md): CamVid 0.87; DRIVE 0.006, Lucchi EM 0.017,
# DroneDeploy 0.024, DeepGlobe 0.055. Below this, augment.train: auto adds quarter turns.
UPRIGHT_FROM = 0.3


def auto_crop(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of a crop of about CROP_AREA pixels in the shape of the median image,
    in multiples of 32, no larger than that image."""
    h, w = median(s[0] for s in sizes), median(s[1] for s in sizes)
    ch = math.sqrt(CROP_AREA * h / w)
    cw = CROP_AREA / ch
    fit = lambda c, side: int(min(side, max(32, 32 * round(c / 32))))  # noqa: E731
    return fit(ch, h), fit(cw, w)


def auto_pipeline(crop: tuple[int, int], turns: bool = False) -> list[dict[str, dict]]:
    """The auto augmentation for this crop; `turns`: also a random quarter turn of the whole
    image first (before the crop, so a crop of any shape stays that shape)."""
    h, w = crop
    return [
        *([{"RandomRotate90": {"p": 1.0}}] if turns else []),
        {"RandomScale": {"scale_limit": list(SCALE_LIMIT), "p": 1.0}},
        {"PadIfNeeded": {"min_height": h, "min_width": w}},
        {"RandomCrop": {"height": h, "width": w}},
        {"HorizontalFlip": {"p": 0.5}},
        # Wide photometric jitter: CamVid's dusk drive 0001TP (mean brightness 59 of 255, the
        # training drives 107 and 139) scored 42-44 dev mIoU with it against 20-24 with
        # x0.8-1.2 jitter over the last validations of 20-minute runs (docs/benchmarks.md).
        {"ColorJitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.05, "p": 0.8}},
        {"RandomGamma": {"gamma_limit": [60, 160], "p": 0.5}},
    ]


def _majority_at(mask: np.ndarray, stride: int, classes: int) -> np.ndarray:
    """`mask` as a prediction made at 1/stride resolution would best give it: every
    stride x stride block takes the class most of its labelled pixels have, blown back up."""
    h, w = mask.shape
    bh, bw = -(-h // stride), -(-w // stride)
    best, label = np.full((bh, bw), -1.0, np.float32), np.zeros((bh, bw), np.uint8)
    for c in np.unique(mask):
        if c >= classes:
            continue
        share = cv2.resize((mask == c).astype(np.float32), (bw, bh), interpolation=cv2.INTER_AREA)
        label[share > best] = c
        best = np.maximum(best, share)
    return np.repeat(np.repeat(label, stride, 0), stride, 1)[:h, :w]


def coarse_ceiling(
    pairs: list[Pair] | SplitScan, cfg: Config, stride: int = COARSE_STRIDE, most: int = CEILING_MASKS
) -> float:
    """The mIoU a model whose output has 1/stride of the input's resolution could reach at
    best on these masks (each stride x stride block given its majority class), over up to
    `most` masks spread evenly through them in path order; at the resolution evaluation uses
    (`data.eval_size` if set). Thin structures (vessels, poles, cracks) pull it down."""
    d = cfg.data
    k = d.num_classes
    scan = SplitScan.wrap(pairs)
    confusion = np.zeros(k * k, np.int64)
    for mask in scan.masks(d, scan.spread(most)):
        if d.eval_size:
            mask = cv2.resize(mask, (d.eval_size[1], d.eval_size[0]), interpolation=cv2.INTER_NEAREST)
        pred = _majority_at(mask, stride, k)
        keep = mask < k
        confusion += np.bincount(mask[keep].astype(np.int64) * k + pred[keep], minlength=k * k)
    m = confusion.reshape(k, k)
    tp, truth, predicted = np.diag(m), m.sum(1), m.sum(0)
    present = truth > 0
    if not present.any():
        return 1.0
    return float(np.mean(tp[present] / (truth + predicted - tp)[present]))


def auto_head(ceiling: float) -> str:
    return "unet" if ceiling < FINE_HEAD_BELOW else "lraspp"


def _mask_counts(masks: Iterable[np.ndarray], cfg: Config) -> tuple[np.ndarray, int]:
    """Each class's pixels in BANDS horizontal bands over `masks`, as a (classes, BANDS)
    array, and the ignored pixels."""
    k, ignore = cfg.data.num_classes, cfg.data.ignore_index
    bands, ignored = np.zeros((k, BANDS), np.int64), 0
    for mask in masks:
        edges = [mask.shape[0] * b // BANDS for b in range(BANDS + 1)]
        for b in range(BANDS):
            counts = np.bincount(mask[edges[b] : edges[b + 1]].ravel(), minlength=256)
            bands[:, b] += counts[:k]
            ignored += int(counts[ignore])
    return bands, ignored


def class_pixels(pairs: list[Pair], cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each class over the masks of `pairs` (ignored pixels not counted), and each
    class's pixels in BANDS horizontal bands of equal height (each mask's own height split
    evenly), as (classes,) and (classes, BANDS) arrays; one read of every mask."""
    bands, _ = _mask_counts((read_mask(m, cfg.data) for _, m in pairs), cfg)
    return bands.sum(1), bands


def check_ignored(
    cfg: Config, split: str, pairs: list[Pair] | SplitScan, counts: tuple[np.ndarray, int] | None = None, keep=False
) -> None:
    """Refuse a split whose ignore index swallows a class, as 0/255 masks read without the
    classes' `value`s do (segtool.data.ignore_check): before the first step, not after a
    run that learned background alone and scored 100 mIoU. `counts` (pixels per class,
    ignored pixels) are the run's own read of every mask when it made one; otherwise up to
    CEILING_MASKS masks spread through the split are read (and kept with `keep`, for the
    cache), and all of them before refusing."""
    if counts is None:
        scan = SplitScan.wrap(pairs)
        sample = scan.spread(CEILING_MASKS)
        bands, ignored = _mask_counts(scan.masks(cfg.data, sample, keep), cfg)
        if len(sample) < len(scan.pairs) and ignore_problem(split, bands.sum(1), ignored, cfg.data):
            bands, ignored = _mask_counts(scan.masks(cfg.data), cfg)  # a sample can miss a rare class
        counts = (bands.sum(1), ignored)
    problem = ignore_problem(split, counts[0], counts[1], cfg.data)
    if problem:
        raise DataError(problem)


def orientation_score(bands: np.ndarray) -> float:
    """How much the classes' vertical layout differs from its mirror image, 0 (none) to 1:
    for each class, the total-variation distance between its share of pixels per horizontal
    band and the same read bottom-up, averaged over classes by pixel count. Road scenes keep
    the sky at the top and the road at the bottom (CamVid: 0.87); aerial, microscopy and
    fundus images have no up (0.006-0.055 on four such datasets)."""
    total = bands.sum(1)
    seen = total > 0
    if not seen.any():
        return 0.0
    profile = bands[seen] / total[seen, None]
    distance = 0.5 * np.abs(profile - profile[:, ::-1]).sum(1)
    return float(np.dot(total[seen], distance) / total[seen].sum())


def auto_class_weights(pixels: np.ndarray) -> list[float]:
    share = pixels / max(int(pixels.sum()), 1)
    w = 1 / np.sqrt(np.maximum(share, MIN_SHARE))
    return [round(float(x), 3) for x in w / w.mean()]


def crop_of(pipeline: list[dict[str, dict]]) -> tuple[int, int] | None:
    """The (height, width) a pipeline's RandomCrop cuts, if it has one."""
    for item in pipeline:
        for name, params in item.items():
            if name in ("RandomCrop", "CenterCrop", "RandomResizedCrop") and "height" in params:
                return int(params["height"]), int(params["width"])
    return None


def resolve_auto(
    cfg: Config, train: list[Pair] | SplitScan, val: list[Pair] | SplitScan, device: str | None = None
) -> tuple[ResolvedConfig, list[str]]:
    """`cfg` with every "auto" replaced by the value this data (and, for train.device, this
    machine: `device`, the run's device type, or None to look) calls for, and one line per
    value chosen, saying why. `train` and `val` are the run's scans (pairs are scanned here):
    their sizes come from the headers read once, and each training mask is decoded once for
    the class weights, the orientation, the ignore check and the head's ceiling together,
    and kept for the cache when data.cache is on."""
    train_scan, val_scan = (x if isinstance(x, SplitScan) else SplitScan.of(x) for x in (train, val))
    train_pairs = train_scan.pairs
    t, d = cfg.train, cfg.data
    notes: list[str] = []
    train_sizes, val_sizes = train_scan.sizes, val_scan.sizes
    if cfg.augment.train != "auto":  # a hand-written crop larger than an image would stop the run at its first step
        check_crops(cfg, train_sizes, [img for img, _ in train_pairs])
    work = [tuple(d.eval_size)] if d.eval_size else train_sizes  # the resolution the model works at
    typical = (int(median(s[0] for s in work)), int(median(s[1] for s in work))) if work else (0, 0)

    data = d
    if d.cache == "auto":
        need = sum(h * w * 4 for h, w in train_sizes + val_sizes)
        data = d.model_copy(update={"cache": need <= CACHE_BYTES})
        notes.append(f"data.cache: auto -> {'on' if data.cache else 'off'} ({need / 2**20:.0f} MB decoded)")
    cache = bool(data.cache)
    # One decode of every training mask: kept for the cache, or (without it) only the
    # sample coarse_ceiling looks at, until the head is chosen.
    head_sample = set() if cfg.model.head != "auto" or t.init_from else set(train_scan.spread(CEILING_MASKS))
    need_masks = cfg.augment.train == "auto" or t.loss.class_weights == "auto"
    if need_masks:
        bands, ignored = _mask_counts(train_scan.masks(d, keep=True if cache else head_sample), cfg)
    else:
        bands, ignored = None, 0
    pixels = bands.sum(1) if bands is not None else None
    check_ignored(cfg, "train", train_scan, (pixels, ignored) if need_masks else None, keep=cache)
    check_ignored(cfg, "val", val_scan, keep=cache)

    augment = cfg.augment
    if augment.train == "auto":
        crop = auto_crop(work)
        orientation = orientation_score(bands)
        turns = orientation < UPRIGHT_FROM
        augment = augment.model_copy(update={"train": auto_pipeline(crop, turns)})
        orient = (
            f"quarter turns and flip (no up or down in the masks: orientation {orientation:.2f})"
            if turns
            else f"flip (the masks have an up: orientation {orientation:.2f})"
        )
        notes.append(
            f"augment.train: auto -> crops of {crop[0]}x{crop[1]} (median image {typical[0]}x{typical[1]}), "
            f"scale 0.55-1.1x, {orient}, colour jitter and gamma"
        )

    model = cfg.model
    if model.head == "auto" and t.init_from:
        from segtool.models.checkpoint import init_head  # checkpoint loading stays out of plain config work

        model = model.model_copy(update={"head": init_head(t.init_from)})
        notes.append(f"model.head: auto -> {model.head} (the head of train.init_from {t.init_from})")
    elif model.head == "auto":
        ceiling = coarse_ceiling(train_scan, cfg)
        model = model.model_copy(update={"head": auto_head(ceiling)})
        why = "thin structures: the U-Net head predicts at 1/2" if model.head == "unet" else "the fastest head"
        notes.append(
            f"model.head: auto -> {model.head} (a 1/{COARSE_STRIDE}-resolution output could reach at most "
            f"{100 * ceiling:.1f} mIoU on these masks; {why})"
        )

    loss = t.loss
    if loss.class_weights == "auto":
        weights = auto_class_weights(pixels)
        loss = loss.model_copy(update={"class_weights": weights})
        notes.append(
            "train.loss.class_weights: auto -> " + ", ".join(f"{c.name} {w}" for c, w in zip(d.classes, weights))
        )

    updates: dict = {"loss": loss}
    steps_per_epoch = max(1, len(train_pairs) // t.batch_size)
    if t.epochs == "auto":
        if t.time_limit:
            updates["epochs"] = TIME_LIMITED_EPOCHS
            notes.append(f"train.epochs: auto -> as many as fit in train.time_limit {t.time_limit}")
        else:
            updates["epochs"] = math.ceil(AUTO_STEPS / steps_per_epoch)
            notes.append(
                f"train.epochs: auto -> {updates['epochs']} ({steps_per_epoch} steps each, about {AUTO_STEPS} steps)"
            )
    epochs = updates.get("epochs", t.epochs)
    if t.val_every == "auto":
        crop = crop_of(augment.train) or typical  # no crop in the pipeline: whole images
        train_px = 3 * len(train_pairs) * crop[0] * crop[1]  # forward + backward ~ 3 forwards
        val_px = sum(h * w for h, w in ([tuple(d.eval_size)] * len(val_sizes) if d.eval_size else val_sizes))
        every = max(1, math.ceil(val_px / train_px / VAL_SHARE))
        if not t.time_limit:
            every = min(every, max(1, epochs // MIN_VALIDATIONS))
        updates["val_every"] = every
        notes.append(f"train.val_every: auto -> {every}")
    if t.workers == "auto":
        updates["workers"] = 0 if data.cache else 2
        notes.append(
            f"train.workers: auto -> {updates['workers']} "
            + (
                "(the cache decodes every pair once)"
                if data.cache
                else "(loader processes decode while the model trains)"
            )
        )
    if t.device == "auto":
        updates["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
        notes.append(
            f"train.device: auto -> {updates['device']} "
            + ("(a CUDA GPU is available)" if updates["device"] == "cuda" else "(no CUDA GPU on this machine)")
        )
    train = t.model_copy(update=updates)
    if not cache:  # the sample the head was chosen on: no decoded data outlives resolution without the cache
        train_scan.forget()
        val_scan.forget()
    return resolved(cfg.model_copy(update={"data": data, "train": train, "augment": augment, "model": model})), notes
