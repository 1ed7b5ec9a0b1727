"""`segtool evaluate model.onnx`: the exported file scored on a split, without torch.

The same pairs, decoding, pre/post-processing (segtool.inference.processing, inside
OnnxSegmenter) and metrics as a .pt checkpoint gets; the masks are read with the
settings the export wrote into the file's metadata.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segtool.config import DataConfig, SplitSpec
from segtool.data.ignore_check import ignore_problem
from segtool.data.io import read_image, read_mask
from segtool.data.pairs import bind_labels, scan_nonempty, size_mismatch
from segtool.errors import DataError, SegtoolError
from segtool.inference.onnx_model import OnnxSegmenter
from segtool.metrics import confusion_matrix, image_miou, summarize
from segtool.reporting.report import EvalReport, data_id, file_sha256, scan_entry


def onnx_data_config(meta: dict) -> DataConfig:
    """The data settings an exported model carries (files from before `masks` existed
    read index masks)."""
    return DataConfig.model_validate(
        {"classes": meta["classes"], "ignore_index": meta["ignore_index"], **meta.get("masks", {})}
    )


def evaluate_onnx(
    model: Path, split: SplitSpec, *, progress: bool = True, streams: int | None = None, tile: bool | None = None
) -> EvalReport:
    """Metrics of an exported ONNX model on `split`; unreadable pairs are reported, not fatal.

    As `predict --model` does, one ONNX Runtime thread per stream and one stream per core:
    each stream reads a pair, predicts and counts it, so decoding overlaps inference. The
    confusion matrix is a sum of integer counts, the same in any order."""
    seg = OnnxSegmenter(model, threads=1, tile=tile)
    data = onnx_data_config(seg.meta)
    pairs, problems = scan_nonempty(bind_labels(split, data))  # annotation splits: drawn in the model's classes
    k = data.num_classes

    def score(pair: tuple[Path, Path]) -> tuple[np.ndarray, int] | dict[str, str]:
        img_path, mask_path = pair
        try:
            image, mask = read_image(img_path), read_mask(mask_path, data)
            if image.shape[:2] != mask.shape:
                raise DataError(size_mismatch(img_path, mask_path, image.shape[:2], mask.shape))
        except SegtoolError as e:
            return {"image": str(img_path), "error": e.one_line()}
        cm = confusion_matrix(seg([image])[0], mask, k, data.ignore_index)
        return cm, mask.size - int(cm.sum())  # and its ignored pixels: masks hold classes or the ignore index only

    cm = np.zeros((k, k), np.int64)
    ignored = 0
    unreadable: list[dict[str, str]] = []
    per_image = []
    with ThreadPoolExecutor(streams or os.cpu_count() or 1) as pool:
        results = pool.map(score, pairs)
        for (img, mask), result in tqdm(
            zip(pairs, results), total=len(pairs), desc="eval", unit="img", leave=False, disable=not progress
        ):
            if isinstance(result, dict):
                unreadable.append(result)
            else:
                cm += result[0]
                ignored += result[1]
                per_image.append((str(img), str(mask), image_miou(result[0])))
    # As for a .pt checkpoint (segtool.reporting.evaluate_torch): a class swallowed by the ignore
    # index is refused before any metric is shown.
    problem = ignore_problem("evaluated", cm.sum(1).tolist(), ignored, data, source=split.describe(), trained=True)
    if problem:
        raise DataError(problem)
    return EvalReport(
        metrics=summarize(cm, [c.name for c in data.classes]),
        checkpoint=str(model),
        tta=False,
        data=split.describe(),
        images=len(pairs) - len(unreadable),
        failed=[scan_entry(p) for p in problems] + unreadable,
        model_sha256=file_sha256(model),
        data_id=data_id(pairs),
        per_image=per_image,
    )
