"""Calibration (`train.loss.calibrate`): giving back part of the class weights' pull.

Cross-entropy weighted by w_c trains a model whose logits lean toward class c by about
log w_c: the weights help thin and rare classes get learned, and the arg-max then paints
those classes a little wider than they are. Whether that costs mIoU depends on the data
and the model: on two-class masks (vessels, mitochondria) it did, on an older CamVid model
it did not (docs/benchmarks.md). So at every validation the run also scores the logits plus
the calibration offsets -share x log w_c for each calibration share in SHARES, from the
same forward passes, and keeps the best-scoring share (the smallest on ties). The
checkpoint stores the share and its offsets beside the weights (under the keys
checkpoint.CALIBRATION_KEYS); every model built from it (evaluate, predict, export, ONNX)
adds the offsets to its logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segtool.config import Config
from segtool.models.checkpoint import CALIBRATION_KEYS

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def calibration_offsets(cfg: Config) -> list[np.ndarray] | None:
    """The per-class calibration offsets that each share in SHARES gives, or None when there is
    nothing to calibrate (calibrate off, no class weights, or all of them equal)."""
    loss = cfg.train.loss
    w = loss.class_weights
    if not loss.calibrate or not isinstance(w, list) or len(set(w)) < 2 or min(w) <= 0:
        return None
    log_w = np.log(np.asarray(w, np.float64))
    return [(-share * log_w).astype(np.float32) for share in SHARES]


def best_share(mious: list[float]) -> int:
    """Index of the best mIoU, the first (smallest share) among equals."""
    return max(range(len(mious)), key=lambda i: (mious[i], -i))


def calibration_record(offsets: list[np.ndarray], index: int) -> dict[str, Any]:
    """What a checkpoint records of the chosen share: the share, and the offsets unless
    they are all zero."""
    share_key, offsets_key = CALIBRATION_KEYS
    record: dict[str, Any] = {share_key: SHARES[index]}
    if SHARES[index]:
        record[offsets_key] = [float(x) for x in offsets[index]]  # float32 values, exactly as scored
    return record
