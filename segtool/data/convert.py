"""`segtool convert`: an annotation tool's export (COCO, LabelMe, CVAT) written out as
images/ + masks/ (single-channel PNGs of class indices) with list files, for other tools.

The masks are the ones training reads, drawn by the same rasteriser (segtool.data.annotations)
in the classes `segtool init` writes for the same data. Everything is written into a temp
folder beside --out and moved into place at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from segtool.data.annotation_survey import survey_pairs
from segtool.data.pairs import raise_first
from segtool.errors import DataError
from segtool.fsutil import WriteError, printable


@dataclass
class Converted:
    out: Path
    images: int
    classes: list[str]
    lists: list[str]


def convert_annotations(source: Path, out: Path) -> Converted:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {printable(out)} exists and is not an empty folder; choose another --out")
    pairs, problems, data, splits = survey_pairs(source)
    raise_first(problems, "; segtool check-data lists them all")
    if not pairs:
        raise DataError(f"{printable(source)} holds no annotated images to convert")
    seen: dict[str, Path] = {}
    for image, _ in pairs:
        if image.stem in seen and seen[image.stem] != image:
            raise DataError(
                f"images {printable(seen[image.stem])} and {printable(image)} share the name {image.stem}, so their "
                "masks would too; rename one"
            )
        seen[image.stem] = image
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise WriteError(f"cannot write to {printable(parent)} ({e.strerror}); choose another --out") from None
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        lines: dict[str, list[str]] = {}
        for (image, mask), split in zip(pairs, splits):
            shutil.copyfile(image, tmp / "images" / image.name)
            shutil.copyfile(mask, tmp / "masks" / f"{image.stem}.png")
            lines.setdefault(split, []).append(f"images/{image.name} masks/{image.stem}.png")
        for split, rows in lines.items():
            (tmp / f"{split}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (tmp / "labels.txt").write_text("\n".join(c.name for c in data.classes) + "\n", encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty, checked above: the finished folder takes its place
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(
            f"cannot write {printable(out)} ({e.strerror}); free some space or choose another --out"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Converted(out, len(pairs), [c.name for c in data.classes], [f"{s}.txt" for s in lines])
