"""Confusion matrix -> IoU, mIoU, pixel accuracy, mean class accuracy, Dice. NumPy only,
so the ONNX Runtime path scores without torch; torch CPU tensors are accepted as arrays."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int) -> np.ndarray:
    """KxK int64 counts, rows = ground truth, columns = prediction; ignored pixels do not count."""
    pred, target = np.asarray(pred), np.asarray(target)
    keep = target != ignore_index
    idx = target[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float]:
    return [n / d if d > 0 else math.nan for n, d in zip(num.tolist(), den.tolist())]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def image_miou(cm: np.ndarray) -> float:
    """mIoU of one image's confusion matrix, over the classes in its labels or prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    seen = union > 0
    return float((tp[seen] / union[seen]).mean()) if seen.any() else math.nan


def summarize(cm: Any, class_names: list[str]) -> dict[str, Any]:
    """Metrics of a confusion matrix. A class absent from both labels and predictions has
    no IoU (None in JSON) and is left out of the means, as in the usual benchmarks."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(1)
    pred = cm.sum(0)
    iou = _ratio(tp, gt + pred - tp)
    acc = _ratio(tp, gt)
    dice = _ratio(2 * tp, gt + pred)
    total = float(cm.sum())
    none_if_nan = lambda v: None if math.isnan(v) else v  # noqa: E731
    return {
        "miou": none_if_nan(_nanmean(iou)),
        "pixel_accuracy": none_if_nan(float(tp.sum()) / total if total else math.nan),
        "mean_accuracy": none_if_nan(_nanmean(acc)),
        "mean_dice": none_if_nan(_nanmean(dice)),
        "pixels": int(total),
        "per_class": [
            {"class": name, "iou": none_if_nan(i), "accuracy": none_if_nan(a), "dice": none_if_nan(d), "pixels": int(g)}
            for name, i, a, d, g in zip(class_names, iou, acc, dice, gt.tolist())
        ],
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def format_table(report: dict[str, Any]) -> str:
    """The per-class table printed on the terminal (percentages)."""
    pct = lambda v: "   -" if v is None else f"{100 * v:5.1f}"  # noqa: E731
    width = max(8, *(len(c["class"]) for c in report["per_class"]))
    lines = [f"{'class':<{width}}  {'IoU':>5}  {'Acc':>5}  {'Dice':>5}  {'pixels':>10}"]
    for c in report["per_class"]:
        lines.append(
            f"{c['class']:<{width}}  {pct(c['iou'])}  {pct(c['accuracy'])}  {pct(c['dice'])}  {c['pixels']:>10}"
        )
    lines.append(
        f"mIoU {pct(report['miou'])}  pixel acc {pct(report['pixel_accuracy'])}  "
        f"mean acc {pct(report['mean_accuracy'])}  mean Dice {pct(report['mean_dice'])}"
    )
    return "\n".join(lines)
