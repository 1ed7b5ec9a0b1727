"""The one evaluation: a predictor's class maps against a split's masks.

`score_split` is the only loop that turns predictions into a confusion matrix. Training's
validation, `segtool evaluate` on a .pt checkpoint or an .onnx file, export's int8 check
and the benchmarks all call it with a Predictor (segtool.inference.outputs), so every
path reads pairs, preprocesses, tiles and decides the same way (segtool.inference.processing)
and counts the same pixels. `evaluate_file` is `segtool evaluate`'s choice of predictor.

Torch-free: an ONNX model is scored without importing torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segtool.builtin import builtin_name, onnx_instead
from segtool.config import DataConfig, SplitSpec
from segtool.data.ignore_check import ignore_problem
from segtool.data.pairs import Pair, bind_labels, read_pair, scan_nonempty
from segtool.errors import DataError, SegtoolError, require_train
from segtool.faults import fault_point
from segtool.inference.backends import model_label, must_exist
from segtool.inference.outputs import Predictor
from segtool.metrics import confusion_matrix, image_miou, summarize
from segtool.reporting.report import EvalReport, data_id, file_sha256, scan_entry


@dataclass
class Scores:
    """What one pass over a split counted: the confusion matrix (rows truth, columns
    prediction), one more per calibration offset scored, the pairs that could not be
    read (image path, message), each image's mIoU, and the pixels the masks ignore."""

    confusion: np.ndarray
    offset_confusion: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    per_image: list[tuple[str, str, float]] = field(default_factory=list)  # (image, mask, mIoU)
    ignored: int = 0


def score_split(
    predictor: Predictor,
    pairs: Sequence[Pair],
    data: DataConfig,
    *,
    read: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    offsets: Sequence[np.ndarray] = (),
    shard: tuple[int, int] = (0, 1),
    readers: int = 2,
    progress: bool = True,
) -> Scores:
    """Score `predictor` on `pairs`, whose masks `data` says how to read (`read(i)`: pair
    i's image and mask, by default from disk; training passes its decoded cache).

    Pairs are read `readers` at a time ahead of the model, which sees batches of
    `predictor.batch_size` on `predictor.streams` threads; a pair that cannot be read is
    counted in `failed`, not fatal. Under several processes each takes every
    `shard[1]`-th pair from `shard[0]`, and the sums of their Scores are the whole
    split's. The counts are integers, the same in any order and for any batch size."""
    k = data.num_classes
    read = read or (lambda i: read_pair(pairs[i], data))
    mine = range(shard[0], len(pairs), shard[1])
    size = max(1, predictor.batch_size)
    chunks = iter([mine[i : i + size] for i in range(0, len(mine), size)])
    scores = Scores(np.zeros((k, k), np.int64), [np.zeros((k, k), np.int64) for _ in offsets])

    def load(chunk: range) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], list[tuple[int, str]]]:
        """The chunk's readable pairs (i, image, mask), and the others (i, message)."""
        good, bad = [], []
        for i in chunk:
            try:
                good.append((i, *read(i)))
            except DataError as e:
                bad.append((i, e.one_line()))
        return good, bad

    def count(loaded: Future) -> tuple[list, list[tuple[int, str]]]:
        """Each readable pair's (i, confusion, offset confusions, ignored pixels), and the rest."""
        good, bad = loaded.result()
        maps = predictor.predict_maps([image for _, image, _ in good], offsets=offsets) if good else []
        counted = []
        for (i, _, mask), m in zip(good, maps):
            cm = confusion_matrix(m.classes, mask, k, data.ignore_index)
            shifted = [
                cm if c is m.classes else confusion_matrix(c, mask, k, data.ignore_index) for c in m.offset_classes
            ]
            counted.append((i, cm, shifted, mask.size - int(cm.sum())))  # masks hold classes or the ignore index only
        return counted, bad

    bar = tqdm(total=len(mine), desc="eval", unit="img", leave=False, disable=not progress)
    with ThreadPoolExecutor(max(1, readers)) as reading, ThreadPoolExecutor(max(1, predictor.streams)) as running:
        pending: deque[Future] = deque()

        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append(running.submit(count, reading.submit(load, chunk)))

        for _ in range(max(1, readers) + max(1, predictor.streams)):  # bounded: never the whole split in memory
            submit()
        while pending:
            counted, bad = pending.popleft().result()
            submit()
            fault_point("eval")
            for i, cm, shifted, ignored in counted:
                scores.confusion += cm
                for total, c in zip(scores.offset_confusion, shifted):
                    total += c
                scores.ignored += ignored
                scores.per_image.append((str(pairs[i][0]), str(pairs[i][1]), image_miou(cm)))
            scores.failed += [(str(pairs[i][0]), message) for i, message in bad]
            bar.update(len(counted) + len(bad))
    bar.close()
    return scores


def split_report(
    scores: Scores,
    data: DataConfig,
    split: SplitSpec,
    pairs: Sequence[Pair],
    problems: Sequence[str],
    model: Path,
    *,
    tta: bool = False,
    own_val: bool = False,
) -> EvalReport:
    """The report of `model`'s Scores on `split` (whose scan found `pairs` and `problems`).
    Masks whose class the ignore index swallowed (0/255 masks read without the classes'
    `value`s) would score the other class alone, at 100: refused before any metric."""
    problem = ignore_problem(
        "val" if own_val else "evaluated",
        scores.confusion.sum(1).tolist(),
        scores.ignored,
        data,
        source=split.describe(),
        trained=True,
    )
    if problem:
        raise DataError(problem)
    return EvalReport(
        metrics=summarize(scores.confusion, [c.name for c in data.classes]),
        checkpoint=str(model),
        tta=tta,
        data=split.describe(),
        images=len(pairs) - len(scores.failed),
        failed=[scan_entry(p) for p in problems] + [{"image": path, "error": msg} for path, msg in scores.failed],
        model_sha256=file_sha256(model),
        data_id=data_id(list(pairs)),
        per_image=scores.per_image,
    )


def evaluate_file(
    model: Path | None,
    data: SplitSpec | None,
    *,
    tta: bool = False,
    device: str = "auto",
    tile: bool | None = None,
    progress: bool = True,
) -> EvalReport:
    """The report of `model` (a .pt checkpoint, a .onnx file, a built-in model's name or
    None for the default) on `data` (None: the checkpoint's own val split). ONNX files,
    and the built-in models when ONNX Runtime is installed, are scored without torch.
    Entries that name missing files are reported and left out, as unreadable pairs are:
    one bad line of a list file does not stop the evaluation of the rest."""
    if builtin_name(model) is not None and data is None:
        raise SegtoolError(
            "the built-in model has no val split on this machine; pass --data, e.g. --data path/to/camvid/val.txt"
        )
    model = onnx_instead(model, tta=tta, device=device) or model
    if model is not None and Path(model).suffix.lower() == ".onnx":
        if data is None:
            raise SegtoolError(f"{model} carries no val split; pass --data (a list file or an images/masks folder)")
        if tta or device == "cuda":
            raise SegtoolError(
                "--tta and --device cuda run PyTorch checkpoints only; ONNX models run on the CPU as exported"
            )
        from segtool.inference.backends import open_predictor

        predictor = open_predictor(model, backend="onnx", tile=tile)
        data = bind_labels(data, predictor.data)  # annotation files: drawn in the model's classes
        pairs, problems = scan_nonempty(data)
        scores = score_split(predictor, pairs, predictor.data, progress=progress)
        return split_report(scores, predictor.data, data, pairs, problems, Path(model))
    must_exist(model)
    require_train(
        f"the PyTorch checkpoint {model_label(model)}" if builtin_name(model) is None else "--tta and --device cuda"
    )
    from segtool.models.checkpoint import resolve_checkpoint
    from segtool.reporting.evaluate_torch import evaluate_checkpoint

    return evaluate_checkpoint(resolve_checkpoint(model), data, progress=progress, tta=tta, device=device, tile=tile)
