"""Confusion matrix -> IoU, mIoU, pixel accuracy, mean class accuracy, Dice. Pure torch."""

from __future__ import annotations

import math
from typing import Any

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """KxK counts, rows = ground truth, columns = prediction; ignored pixels do not count."""
    keep = target != ignore_index
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> list[float]:
    return [n / d if d > 0 else math.nan for n, d in zip(num.tolist(), den.tolist())]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def summarize(cm: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Metrics of a confusion matrix. A class absent from both labels and predictions has
    no IoU (None in JSON) and is left out of the means, as in the usual benchmarks."""
    cm = cm.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    iou = _ratio(tp, gt + pred - tp)
    acc = _ratio(tp, gt)
    dice = _ratio(2 * tp, gt + pred)
    total = cm.sum().item()
    none_if_nan = lambda v: None if math.isnan(v) else v  # noqa: E731
    return {
        "miou": none_if_nan(_nanmean(iou)),
        "pixel_accuracy": none_if_nan(tp.sum().item() / total if total else math.nan),
        "mean_accuracy": none_if_nan(_nanmean(acc)),
        "mean_dice": none_if_nan(_nanmean(dice)),
        "pixels": int(total),
        "per_class": [
            {"class": name, "iou": none_if_nan(i), "accuracy": none_if_nan(a), "dice": none_if_nan(d), "pixels": int(g)}
            for name, i, a, d, g in zip(class_names, iou, acc, dice, gt.tolist())
        ],
        "confusion_matrix": cm.long().tolist(),
    }


def format_table(report: dict[str, Any]) -> str:
    """The per-class table printed on the terminal (percentages)."""
    pct = lambda v: "   -" if v is None else f"{100 * v:5.1f}"  # noqa: E731
    width = max(8, *(len(c["class"]) for c in report["per_class"]))
    lines = [f"{'class':<{width}}  {'IoU':>5}  {'Acc':>5}  {'Dice':>5}  {'pixels':>10}"]
    for c in report["per_class"]:
        lines.append(f"{c['class']:<{width}}  {pct(c['iou'])}  {pct(c['accuracy'])}  {pct(c['dice'])}  {c['pixels']:>10}")
    lines.append(
        f"mIoU {pct(report['miou'])}  pixel acc {pct(report['pixel_accuracy'])}  "
        f"mean acc {pct(report['mean_accuracy'])}  mean Dice {pct(report['mean_dice'])}"
    )
    return "\n".join(lines)
