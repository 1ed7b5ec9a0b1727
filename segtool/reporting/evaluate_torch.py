"""`segtool evaluate` on a PyTorch checkpoint: segtool.reporting.evaluate's one scoring
loop over the checkpoint's predictor; under torchrun each rank scores its share and every
rank returns the same, summed, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segtool.config import SplitSpec
from segtool.data.pairs import bind_labels, config_split, scan_nonempty
from segtool.inference.torch_backend import torch_predictor
from segtool.models.checkpoint import load_model
from segtool.models.distributed import Dist, distributed
from segtool.models.tta import TestTimeAugment
from segtool.reporting.evaluate import Scores, score_split, split_report
from segtool.reporting.report import EvalReport

EVAL_BATCH = 4


def summed(scores: Scores, ctx: Dist) -> Scores:
    """The Scores of all ranks together (this rank's alone when there is one)."""
    if not ctx.active:
        return scores

    def total(cm: np.ndarray) -> np.ndarray:
        return ctx.sum(torch.from_numpy(cm)).numpy()

    return Scores(
        total(scores.confusion),
        [total(cm) for cm in scores.offset_confusion],
        ctx.gather(scores.failed),
        ctx.gather(scores.per_image),
        int(ctx.sum(torch.tensor([scores.ignored]))[0]),
    )


def evaluate_checkpoint(
    checkpoint: Path,
    data: SplitSpec | None = None,
    *,
    progress: bool = True,
    tta: bool = False,
    device: str = "auto",
    tile: bool | None = None,
) -> EvalReport:
    """Metrics of a checkpoint on `data`, or on the val split of the checkpoint's own config;
    with `tta`, of its test-time-augmented predictions, on `device` (auto, cpu or cuda: this
    machine's choice, whatever the checkpoint was trained on)."""
    cfg, model = load_model(checkpoint)
    if tta:
        model = TestTimeAugment(model)
    split = bind_labels(data, cfg.data) if data else config_split(cfg.data, "val")  # annotations: the model's classes
    pairs, problems = scan_nonempty(split)
    with distributed(device, "--device") as ctx:  # under torchrun each rank takes its share
        predictor = torch_predictor(model, cfg, ctx.device, batch_size=EVAL_BATCH, tile=tile, label=str(checkpoint))
        scores = score_split(predictor, pairs, cfg.data, shard=(ctx.rank, ctx.world), progress=progress and ctx.main)
        scores = summed(scores, ctx)
    return split_report(scores, cfg.data, split, pairs, problems, checkpoint, tta=tta, own_val=data is None)
