"""The training losses: cross-entropy (plain or over the hard pixels only), an added soft
Dice term, and distillation from a teacher's class probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segtool.config import Config
from segtool.errors import SegtoolError


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, cfg: Config, weight: torch.Tensor | None
) -> torch.Tensor:
    ignore = cfg.data.ignore_index
    lc = cfg.train.loss
    if lc.ohem_thresh is None:
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore)
    else:
        loss = ohem_cross_entropy(logits, target, weight, ignore, lc.ohem_thresh, lc.ohem_min_kept)
    if lc.dice_weight > 0:
        valid = (target != ignore).unsqueeze(1)
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        dice = (2 * inter + 1) / (denom + 1)
        loss = loss + lc.dice_weight * (1 - dice.mean())
    return loss


def distill_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, ignore: int, t: float
) -> torch.Tensor:
    """KL divergence from the teacher's class probabilities to the model's, both softened by
    temperature `t`, averaged over the labelled pixels and scaled by t^2 (so its gradients
    keep their size as t changes). Padding and unlabelled pixels teach nothing."""
    valid = target != ignore
    log_p = F.log_softmax(logits.float() / t, 1)
    log_q = F.log_softmax(teacher_logits.float() / t, 1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)
    return t * t * (kl * valid).sum() / valid.sum().clamp_min(1)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore: int, thresh: float, min_kept: float
) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels only: those whose probability of their
    true class is at most `thresh`, or, if fewer, the `min_kept` share of the labelled
    pixels with the lowest such probability. Weighted as F.cross_entropy weighs its mean."""
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction="none")
    valid = target != ignore
    safe = target.masked_fill(~valid, 0)
    with torch.no_grad():
        p_true = logits.detach().float().softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
        p_true = p_true.masked_fill(~valid, 2.0)  # above any cut: never kept
        k = max(1, int(min_kept * int(valid.sum())))
        cut = max(thresh, float(p_true.flatten().kthvalue(k).values))  # k <= labelled pixels, or 1
        keep = valid & (p_true <= cut)
    w = weight[safe] if weight is not None else torch.ones_like(per_pixel)
    return (per_pixel * keep).sum() / (w * keep).sum().clamp_min(1e-12)


def class_weights(cfg: Config, device: torch.device) -> torch.Tensor | None:
    w = cfg.train.loss.class_weights
    if w is None:
        return None
    if len(w) != cfg.data.num_classes:
        raise SegtoolError(
            f"train.loss.class_weights has {len(w)} values but data.classes has {cfg.data.num_classes}; "
            "give one per class"
        )
    return torch.tensor(w, dtype=torch.float32, device=device)
