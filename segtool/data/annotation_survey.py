"""`segtool init` and `segtool convert` on an annotation tool's export: find the COCO JSON,
LabelMe folder or CVAT XML, list its labels as classes (COCO by category id, the others by
name; background first) and measure their pixel shares from the drawn masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segtool.config import ClassSpec, DataConfig, SplitSpec
from segtool.data.annotations import (
    _BACKGROUND_ALIASES,
    IGNORE_LABEL,
    default_classes,
    detect_format,
    read_annotations,
)
from segtool.data.pairs import Pair, bind_labels, scan_pairs
from segtool.errors import DataError


def _coco_files(folder: Path) -> list[Path]:
    found = []
    for f in sorted([*folder.glob("*.json"), *folder.glob("annotations/*.json")]):
        try:
            if detect_format(f) == "coco":
                found.append(f)
        except DataError:
            continue
    return found


def find_layout(root: Path) -> tuple[dict, dict | None] | None:
    """(train, val or None) annotation split specs under `root` (a file or folder), as
    mappings of paths relative to the folder; None when it holds no annotation export."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() in (".json", ".xml"):
            return {"annotations": root.name}, None
        return None
    if not root.is_dir() or ((root / "images").is_dir() and (root / "masks").is_dir()):
        return None
    coco = _coco_files(root)
    if coco:
        rel = [str(f.relative_to(root)) for f in coco]
        train = [r for r in rel if "train" in Path(r).stem.lower()]
        val = [r for r in rel if "val" in Path(r).stem.lower()]
        if len(train) == 1 and len(val) == 1:
            return {"annotations": train[0]}, {"annotations": val[0]}
        return {"annotations": rel[0]}, None
    xml = sorted(root.glob("*.xml"))
    if xml:
        return {"annotations": xml[0].name}, None
    sub = [n for n in ("train", "val", "valid", "validation") if (root / n).is_dir() and any((root / n).glob("*.json"))]
    if "train" in sub and len(sub) > 1:
        return {"annotations": "train"}, {"annotations": sub[1]}
    if any(root.glob("*.json")):
        return {"annotations": "."}, None
    return None


def _images_folder(spec: dict, folder: Path) -> dict:
    """COCO and CVAT name images by file name: say where they are when it is not beside the file."""
    path = folder / spec["annotations"]
    if path.is_dir():
        return spec
    found = read_annotations(path)
    first = next((img for img in found.images if img.image is not None), None)
    if first is not None and first.image.parent != path.parent:
        name = Path(first.name.replace("\\", "/"))
        base = first.image
        for _ in name.parts:
            base = base.parent
        try:
            spec = {**spec, "images": str(base.relative_to(folder))}
        except ValueError:
            spec = {**spec, "images": str(base)}
    return spec


def labels_of(folder: Path, specs: list[dict]) -> tuple[list[str], str]:
    """Every label of these splits in a stable order (COCO by category id, else by name)."""
    labels: list[str] = []
    fmt = ""
    for spec in specs:
        images = folder / spec["images"] if "images" in spec else None
        found = read_annotations(folder / spec["annotations"], images=images)
        fmt = found.fmt
        labels += [x for x in found.labels if x not in labels]
    if fmt != "coco":
        labels = sorted(labels)
    return labels, fmt


def data_for(labels: list[str]) -> DataConfig:
    """The DataConfig `segtool init` writes for these labels (colours aside)."""
    from segtool.data.survey import class_colour

    classes = []
    for i, name in enumerate(default_classes(labels)):
        sources = tuple(x for x in labels if x.lower() in _BACKGROUND_ALIASES and x != name) if i == 0 else ()
        classes.append(ClassSpec(name=name, color=tuple(class_colour(i)), sources=sources))
    return DataConfig(classes=classes)


def spec_of(folder: Path, spec: dict) -> SplitSpec:
    return SplitSpec.model_validate(spec).resolved(folder)


def annotation_survey(root: Path):
    """A survey.Survey for an annotation export, or None when `root` holds none."""
    from segtool.data.survey import SAMPLE, Survey, _propose_val, _yaml

    root = Path(root).resolve()
    layout = find_layout(root)
    if layout is None:
        return None
    folder = root.parent if root.is_file() else root
    train, val = (_images_folder(s, folder) if s else None for s in layout)
    labels, fmt = labels_of(folder, [s for s in (train, val) if s])
    data = data_for(labels)
    pairs, problems = scan_pairs(bind_labels(spec_of(folder, train), data))
    if not pairs:
        raise DataError(
            f"no usable annotated images in {folder / train['annotations']}" + (f": {problems[0]}" if problems else "")
        )
    notes = [f"{fmt} annotations: {len(labels)} labels drawn into masks (cached under $SEGTOOL_CACHE/annotations)"]
    if any(x.lower() == IGNORE_LABEL for x in labels):
        notes.append(f"label {IGNORE_LABEL} marks ignored pixels (data.ignore_index)")
    if problems:
        notes.append(f"{len(problems)} annotated images cannot be used: segtool check-data lists them")

    def flow(spec: dict, **more) -> str:
        return (
            "{"
            + ", ".join(
                f"{k}: {_yaml(str(v)) if k != 'include' and k != 'exclude' else _yaml(v)}"
                for k, v in {**spec, **more}.items()
            )
            + "}"
        )

    if val is None:
        patterns, why = _propose_val(pairs)
        if not patterns:
            raise DataError(
                f"{len(pairs)} annotated image(s) are too few to hold a val split out of; add images, or give "
                "train and val annotation files"
            )
        train_text, val_text = flow(train, exclude=patterns), flow(train, include=patterns)
        val_note = f"no val split found: proposed one, {why}"
    else:
        train_text, val_text, val_note = flow(train), flow(val), f"val: {val['annotations']}"
    s = Survey(folder, train_text, val_text, val_note, "index", notes=notes)
    hist = np.zeros(256, np.int64)
    step = max(1, len(pairs) // SAMPLE)
    for _, mask in pairs[::step]:
        with Image.open(mask) as im:
            hist += np.bincount(np.asarray(im).ravel(), minlength=256)
    total = hist[: len(data.classes)].sum() or 1
    for i, c in enumerate(data.classes):
        entry = {"name": c.name, "color": list(c.color), "share": hist[i] / total}
        if c.sources:
            entry["sources"] = list(c.sources)
        s.classes.append(entry)
    return s


def survey_pairs(root: Path) -> tuple[list[Pair], list[str], DataConfig, list[str]]:
    """For `segtool convert`: every annotated image of `root`'s splits with its mask drawn in
    the classes `segtool init` writes, the problems, those classes, and the split of each pair."""
    root = Path(root).resolve()
    layout = find_layout(root)
    if layout is None:
        raise DataError(
            f"{root} holds no COCO .json, LabelMe .json files or CVAT .xml; give the annotation file or its folder"
        )
    folder = root.parent if root.is_file() else root
    specs = [_images_folder(s, folder) for s in layout if s]
    labels, _ = labels_of(folder, specs)
    data = data_for(labels)
    pairs, problems, names = [], [], []
    for name, spec in zip(("train", "val") if len(specs) > 1 else ("all",), specs):
        found, trouble = scan_pairs(bind_labels(spec_of(folder, spec), data))
        pairs += found
        problems += trouble
        names += [name] * len(found)
    return pairs, problems, data, names


def init_data(split: SplitSpec, data: DataConfig) -> DataConfig:
    """`data` with the classes `segtool init` writes for an annotation split's labels."""
    found = read_annotations(split.annotations, split.annotation_format, split.images)
    labels = found.labels if found.fmt == "coco" else sorted(found.labels)
    return data.model_copy(update={"classes": data_for(labels).classes})
