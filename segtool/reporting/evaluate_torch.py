"""Evaluation over a whole split: one confusion matrix, then the metrics of segtool.metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from segtool.config import SplitSpec
from segtool.data.ignore_check import ignore_problem
from segtool.data.loader import eval_loader, eval_workers
from segtool.data.pairs import bind_labels, config_split, scan_nonempty
from segtool.errors import DataError
from segtool.faults import fault_point
from segtool.inference.processing import Tiling, postprocess, run_batched, tiled_maps, tiling_of
from segtool.metrics import confusion_matrix, image_miou, summarize
from segtool.models.checkpoint import load_model
from segtool.models.device import layout
from segtool.models.distributed import distributed
from segtool.models.tta import TestTimeAugment
from segtool.reporting.report import EvalReport, data_id, file_sha256, scan_entry


@dataclass
class Evaluation:
    """What one pass over a split counted: the confusion matrix (rows truth, columns
    prediction) and the pairs that could not be read, as (image path, message)."""

    confusion: torch.Tensor
    failed: list[tuple[str, str]] = field(default_factory=list)
    per_image: list[tuple[str, str, float]] = field(default_factory=list)  # (image, mask, mIoU)
    shifted: list[torch.Tensor] = field(default_factory=list)  # with `shifts`: one confusion matrix per shift
    ignored: int = 0  # pixels of the masks that are data.ignore_index (the confusion matrix leaves them out)


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    *,
    progress: bool = True,
    memory_format: torch.memory_format = torch.contiguous_format,
    tiling: Tiling | None = None,
    shifts: list[np.ndarray] | None = None,
) -> Evaluation:
    """Confusion matrix over `loader`, and the pairs it could not read (when the loader
    skips errors). Images go to the model in `memory_format` (channels_last for a model
    trained in it), each unpadded, with only images of its own size beside it, and its
    logits come back through segtool.inference.processing.postprocess: the same path as
    predict and ONNX Runtime. With `shifts` (per-class logit offsets), `shifted` also counts
    the predictions of the logits plus each offset, from the same forward passes (tiled
    images take one more pass per non-zero offset)."""
    model.eval()
    shifts = list(shifts or [])
    result = Evaluation(torch.zeros(num_classes, num_classes, dtype=torch.long))
    result.shifted = [torch.zeros(num_classes, num_classes, dtype=torch.long) for _ in shifts]

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=memory_format)
        return model(x).float().cpu().numpy()

    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
        fault_point("eval")
        result.failed += [(str(loader.dataset.pairs[i][0]), msg) for i, msg in batch["errors"]]
        if "image" not in batch:
            continue
        images = batch["image"].numpy()
        sizes, masks = batch["image_size"].tolist(), batch["mask_size"].tolist()
        preds: dict[int, np.ndarray] = {}
        shifted: dict[int, list[np.ndarray]] = {}
        for i, ((h, w), (mh, mw)) in enumerate(zip(sizes, masks)):
            if tiling is not None and tiling.applies(h, w) and (h, w) == (mh, mw):  # large: by tiles, memory bounded
                # B023: both are called in this iteration only, so the loop's variables are the current ones
                window = lambda y, x, th, tw, i=i: images[i, :, y : y + th, x : x + tw]  # noqa: E731, B023
                tiled = lambda fn: tiled_maps((h, w), num_classes, window, fn, tiling.size, tiling.overlap).classes  # noqa: E731, B023
                preds[i] = tiled(run)
                shifted[i] = [
                    tiled(lambda b, s=s: run(b) + s[None, :, None, None]) if s.any() else preds[i] for s in shifts
                ]
        whole = [i for i in range(len(sizes)) if i not in preds]
        inputs = [images[i, :, : sizes[i][0], : sizes[i][1]] for i in whole]
        for i, logits in zip(whole, run_batched(inputs, run)):
            preds[i] = postprocess(logits, masks[i]).classes
            shifted[i] = [
                postprocess(logits + s[:, None, None], masks[i]).classes if s.any() else preds[i] for s in shifts
            ]
        for i, (mh, mw) in enumerate(masks):
            truth = batch["mask"][i, :mh, :mw].numpy()
            cm = confusion_matrix(preds[i], truth, num_classes, ignore_index)
            result.confusion += torch.from_numpy(cm)
            result.ignored += truth.size - int(cm.sum())  # masks hold classes or the ignore index only
            for total, pred in zip(result.shifted, shifted[i]):  # a zero offset is the plain prediction, counted once
                total += torch.from_numpy(
                    cm if pred is preds[i] else confusion_matrix(pred, truth, num_classes, ignore_index)
                )
            img_path, mask_path = loader.dataset.pairs[int(batch["index"][i])]
            result.per_image.append((str(img_path), str(mask_path), image_miou(cm)))
    return result


EVAL_BATCH = 4


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
    machine's choice, whatever the checkpoint was trained on). Under torchrun every rank
    evaluates its share and returns the same, summed, report."""
    cfg, model = load_model(checkpoint)
    if tta:
        model = TestTimeAugment(model)
    fmt = layout(cfg)
    split = bind_labels(data, cfg.data) if data else config_split(cfg.data, "val")  # annotations: the model's classes
    # Entries that name missing files are reported and left out, as unreadable pairs are:
    # one bad line of a list file does not stop the evaluation of the rest.
    pairs, problems = scan_nonempty(split)
    with distributed(device, "--device") as ctx:  # under torchrun each rank takes its share
        loader = eval_loader(
            cfg, pairs, batch_size=EVAL_BATCH, workers=eval_workers(), skip_errors=True, rank=ctx.rank, world=ctx.world
        )
        model = model.to(ctx.device, memory_format=fmt)
        ev = evaluate_model(
            model,
            loader,
            cfg.data.num_classes,
            cfg.data.ignore_index,
            ctx.device,
            progress=progress and ctx.main,
            memory_format=fmt,
            tiling=tiling_of(cfg.data).forced(tile),
        )
        cm, failed, per_image = ctx.sum(ev.confusion), ctx.gather(ev.failed), ctx.gather(ev.per_image)
        ignored = int(ctx.sum(torch.tensor([ev.ignored]))[0])
    # Masks whose class the ignore index swallowed (0/255 masks without the classes' `value`s)
    # would score the other class alone, at 100: refused before any metric is shown.
    problem = ignore_problem(
        "val" if data is None else "evaluated",
        cm.sum(1).tolist(),
        ignored,
        cfg.data,
        source=split.describe(),
        trained=True,
    )
    if problem:
        raise DataError(problem)
    return EvalReport(
        metrics=summarize(cm, [c.name for c in cfg.data.classes]),
        checkpoint=str(checkpoint),
        tta=tta,
        data=split.describe(),
        images=len(pairs) - len(failed),
        failed=[scan_entry(p) for p in problems] + [{"image": path, "error": msg} for path, msg in failed],
        model_sha256=file_sha256(checkpoint),
        data_id=data_id(pairs),
        per_image=per_image,
    )
