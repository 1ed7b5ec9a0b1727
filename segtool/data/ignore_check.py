"""When the ignore index swallows a class: the rule check-data, train and evaluate share.

0/255 binary masks read with a class list that gives no `value`s store the foreground as
255, the default data.ignore_index: every foreground pixel is ignored, training learns
background alone and scores "mIoU 100.0", and nothing looks wrong. `segtool init` writes
`value`s for such masks; a hand-written config must be caught where the masks are read.

Ignore borders (Pascal VOC's) or void regions (Cityscapes') are a few percent of a split's
pixels and sit beside many classes. So a split is refused when a class has no pixels at
all and the ignored pixels either are most of the split or sit beside a single class:
sparse labels (scribbles: mostly ignored, but every class present) still train.
`segtool check-data` is a report, not a refusal, and also flags a mostly ignored split
whose classes are all present (`advisory`).

NumPy only: the ONNX evaluation path calls it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from segtool.config import DataConfig

MOSTLY_IGNORED = 0.5  # more than half of the pixels: far wider than any ignore border
LONE_CLASS_IGNORED = 0.001  # beside a single class, more than a stray pixel or two is suspect


def _percent(share: float) -> str:
    pct = 100 * share
    return f"{pct:.0f}%" if pct >= 1 else f"{pct:.1g}%"


def _free_value(data: DataConfig, taken: set[int]) -> int:
    """An ignore index no class or ignore value uses, as high as can be (254 for 0/255 masks)."""
    used = taken | set(data.ignore_values) | {data.ignore_index}
    return next((v for v in range(254, data.num_classes - 1, -1) if v not in used), 255)


def _fix(data: DataConfig, pixels: Sequence[int], trained: bool) -> str:
    """What to set so the ignored value becomes the class that has no pixels; with
    `trained`, in the config a model was trained with."""
    ii = data.ignore_index
    where = " in the config the model was trained with, and train again" if trained else ""
    if data.mask_format == "rgb":
        return f"if one of data.ignore_colors marks a class, list it in data.classes instead{where}"
    if data.reduce_zero_label:
        return f"if stored 0 marks a class, set data.reduce_zero_label: false{where}"
    absent = [i for i, n in enumerate(pixels) if not n]
    current = [c.value if c.value is not None else i for i, c in enumerate(data.classes)]
    lead = (
        f"if {ii} marks a class, as in 0/255 binary masks (foreground stored as {ii}), "
        "give each class its stored `value` in data.classes"
    )
    # segtool init writes such a config; a model's own config is fixed where it was trained.
    tail = (
        f"{where}, or store these masks' classes as 0..{len(pixels) - 1}"
        if trained
        else " (segtool init writes such a config)"
    )
    if len(absent) == 1:
        values = [ii if i == absent[0] else v for i, v in enumerate(current)]
        shown = ", ".join(f"data.classes[{i}].value: {v}" for i, v in enumerate(values))
        return (
            f"{lead} ({shown}) and set data.ignore_index: {_free_value(data, set(values))}, "
            f"a value the masks do not use{tail}"
        )
    if absent:
        return (
            f"{lead} (data.classes[k].value: {ii} for the class k that {ii} marks, every other class its own) "
            f"and set data.ignore_index to a value the masks do not use{tail}"
        )
    return f"{lead} (e.g. value: 0 and value: {ii}){where}"


def ignore_problem(
    split: str,
    pixels: Sequence[int],
    ignored: int,
    data: DataConfig,
    *,
    source: str | None = None,
    advisory: bool = False,
    trained: bool = False,
) -> str | None:
    """The one-line problem with a split whose masks counted `pixels` per class (in class
    order) and `ignored` ignored pixels, or None. `split` names it in the message ("train",
    "val", "evaluated"), with `source` (its folders or list file) when given. With
    `advisory` (check-data), a mostly ignored split is a problem even when every class has
    pixels. With `trained` (evaluate: the masks are read with a model's own config), the
    fix names that config."""
    pixels = [int(n) for n in pixels]
    total = sum(pixels) + int(ignored)
    if not total or not ignored or not data.classes:
        return None
    share = ignored / total
    present = [i for i, n in enumerate(pixels) if n]
    absent = len(present) < len(pixels)
    mostly = share > MOSTLY_IGNORED
    lone = len(pixels) > 1 and len(present) == 1 and share >= LONE_CLASS_IGNORED
    if not ((absent and (mostly or lone)) or (advisory and mostly)):
        return None
    ignoring = f"data.ignore_index {data.ignore_index}"
    if data.ignore_values:
        ignoring += f", data.ignore_values {list(data.ignore_values)}"
    if data.mask_format == "rgb":
        ignoring = "data.ignore_colors"
    if data.reduce_zero_label:
        ignoring += ", data.reduce_zero_label"
    beside = f" and only class {data.classes[present[0]].name} has pixels" if lone else ""
    where = f" ({source})" if source else ""
    return (
        f"{_percent(share)} of the {split} split's mask pixels{where} are ignored ({ignoring}){beside}; "
        f"{_fix(data, pixels, trained)}"
    )
