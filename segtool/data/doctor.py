"""The dataset doctor: scan every pair of a split before anyone trains on it.

`check_split` reads every image and mask in full (counts, sizes, modes, unreadable or
unpaired files, label values and unknown colours, class pixel histogram, duplicate
images); `header_problems` reads only file headers, cheap enough for the start of every
`segtool train` (segtool.data.scan reads them there, once), and `quick_check` raises on
the first problem it finds.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segtool.config import DataConfig, SplitSpec
from segtool.data.annotations import annotation_notes
from segtool.data.ignore_check import ignore_problem
from segtool.data.io import header, max_pixels, read_image, read_mask
from segtool.data.pairs import Pair, raise_first, scan_pairs, size_mismatch
from segtool.errors import DataError


def header_problems(pairs: list[Pair]) -> tuple[list[tuple[int, int]], list[str]]:
    """Each pair's image size (H, W, as viewers show it) from its headers alone, and one
    message per pair whose files cannot be opened or whose image and mask sizes differ
    (those pairs have no size in the list)."""
    max_pixels()  # a bad SEGTOOL_MAX_PIXELS stops training here, before any file is read
    sizes: list[tuple[int, int]] = []
    problems: list[str] = []
    for img, mask in pairs:
        try:
            (iw, ih), _ = header(img)
        except Exception:
            problems.append(f"image {img} cannot be read (not an image, or damaged); replace or remove it")
            continue
        try:
            (mw, mh), _ = header(mask)
        except Exception:
            problems.append(f"mask {mask} cannot be read (not an image, or damaged); replace or remove it")
            continue
        if (iw, ih) != (mw, mh):
            problems.append(size_mismatch(img, mask, (ih, iw), (mh, mw)))
            continue
        sizes.append((ih, iw))
    return sizes, problems


def quick_check(pairs: list[Pair]) -> None:
    """Raise on the first pair whose files cannot be opened or whose sizes differ (headers only)."""
    raise_first(header_problems(pairs)[1], "; segtool check-data lists them all")


@dataclass
class SplitReport:
    name: str
    source: str
    pairs: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    mask_modes: dict[str, int] = field(default_factory=dict)
    class_pixels: dict[str, int] = field(default_factory=dict)
    ignored_pixels: int = 0
    duplicates: list[list[str]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["hashes"]
        return out


def _check_pair(pair: Pair, data: DataConfig) -> dict[str, Any]:
    img_path, mask_path = pair
    out: dict[str, Any] = {"pair": pair}
    try:
        for key, path in (("image_mode", img_path), ("mask_mode", mask_path)):
            try:
                out[key] = header(path)[1]
            except Exception:  # unreadable: the reader below names the file and the fix
                pass
        image = read_image(img_path)
        out["hash"] = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        if data.num_classes:
            mask = read_mask(mask_path, data)
            out["hist"] = np.bincount(mask.ravel(), minlength=256)
        else:  # no class list: report the values (or colours) found instead of judging them
            mask, out["raw"] = raw_labels(mask_path, data)
        if image.shape[:2] != mask.shape:
            raise DataError(size_mismatch(img_path, mask_path, image.shape[:2], mask.shape))
        out["size"] = f"{image.shape[0]}x{image.shape[1]}"
    except DataError as e:
        out["problem"] = e.one_line()
    except Exception as e:  # a decoder bug or odd file must not end the scan
        out["problem"] = f"{img_path} / {mask_path}: {type(e).__name__}: {e}"
    return out


def check_split(name: str, split: SplitSpec, data: DataConfig, threads: int = 4) -> SplitReport:
    max_pixels()  # a bad SEGTOOL_MAX_PIXELS is one error, not a problem for every pair
    pairs, problems = scan_pairs(split)
    report = SplitReport(name=name, source=split.describe(), pairs=len(pairs), problems=list(problems))
    report.warnings += annotation_notes(split)  # COCO / LabelMe / CVAT: shapes outside the image, empty files
    if not pairs:
        report.problems.append(f"{name} split {split.describe()} holds no image/mask pairs")
        return report
    sizes, image_modes, mask_modes, raw = Counter(), Counter(), Counter(), Counter()
    hist = np.zeros(256, np.int64)
    by_hash: dict[str, list[str]] = {}
    # Decoding releases the GIL, so threads scan several files at once.
    with ThreadPoolExecutor(threads) as pool:
        for r in pool.map(lambda p: _check_pair(p, data), pairs):
            image_modes[r.get("image_mode", "?")] += "image_mode" in r
            mask_modes[r.get("mask_mode", "?")] += "mask_mode" in r
            if "problem" in r:
                report.problems.append(r["problem"])
                continue
            sizes[r["size"]] += 1
            if "hist" in r:
                hist += r["hist"]
            raw.update(r.get("raw", {}))
            by_hash.setdefault(r["hash"], []).append(str(r["pair"][0]))
    report.sizes = dict(sizes.most_common())
    report.image_modes = {k: v for k, v in image_modes.items() if v}
    report.mask_modes = {k: v for k, v in mask_modes.items() if v}
    report.hashes = {h: paths[0] for h, paths in by_hash.items()}
    report.duplicates = [paths for paths in by_hash.values() if len(paths) > 1]
    for paths in report.duplicates:
        report.warnings.append(f"{len(paths)} identical images: {', '.join(paths[:3])}")
    if data.num_classes:
        report.class_pixels = {c.name: int(hist[i]) for i, c in enumerate(data.classes)}
        report.ignored_pixels = int(hist[data.ignore_index])
        absent = [n for n, v in report.class_pixels.items() if v == 0]
        if absent:
            report.warnings.append(f"classes with no pixels: {', '.join(absent)}")
        # The same rule, and the same words, as train and evaluate (data.ignore_check).
        problem = ignore_problem(name, list(report.class_pixels.values()), report.ignored_pixels, data, advisory=True)
        if problem:
            report.problems.append(problem)
    else:
        report.class_pixels = {k: int(v) for k, v in sorted(raw.items(), key=lambda kv: -kv[1])}
    return report


def raw_labels(path: Path, data: DataConfig) -> tuple[np.ndarray, dict[str, int]]:
    """A mask decoded as training decodes it, but with no class list to judge it by: its
    stored values (index masks, palette indices included) or colours (rgb masks), with
    their pixel counts. Returns the label array (for the size check) and the counts."""
    rgb = data.mask_format == "rgb"
    mask = read_mask(path, data.model_copy(update={"classes": [], "ignore_values": [], "ignore_colors": []}), raw=True)
    if rgb:
        codes, counts = np.unique(mask.reshape(-1, 3) @ np.array([65536, 256, 1]), return_counts=True)
        found = {f"({c >> 16},{(c >> 8) & 255},{c & 255})": int(n) for c, n in zip(codes.tolist(), counts.tolist())}
        return mask[..., 0], found
    values, counts = np.unique(mask, return_counts=True)
    return mask, {str(v): int(n) for v, n in zip(values.tolist(), counts.tolist())}


def cross_split_duplicates(reports: list[SplitReport]) -> None:
    """The same image in two splits leaks training data into validation: a problem."""
    for i, a in enumerate(reports):
        for b in reports[i + 1 :]:
            for h in a.hashes.keys() & b.hashes.keys():
                b.problems.append(
                    f"image {b.hashes[h]} in {b.name} is identical to {a.hashes[h]} in {a.name}; remove one"
                )


def format_report(reports: list[SplitReport]) -> str:
    lines = []
    for r in reports:
        lines.append(f"{r.name}: {r.pairs} pairs from {r.source}")
        if r.sizes:
            lines.append("  sizes (HxW): " + ", ".join(f"{s} x{n}" for s, n in list(r.sizes.items())[:5]))
            lines.append("  image modes: " + ", ".join(f"{m} x{n}" for m, n in r.image_modes.items()))
            lines.append("  mask modes:  " + ", ".join(f"{m} x{n}" for m, n in r.mask_modes.items()))
        total = sum(r.class_pixels.values()) + r.ignored_pixels
        if total:
            shares = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in r.class_pixels.items())
            lines.append(
                f"  class pixels: {shares}"
                + (f", ignored {100 * r.ignored_pixels / total:.1f}%" if r.ignored_pixels else "")
            )
        for w in r.warnings:
            lines.append(f"  warning: {w}")
        for p in r.problems[:20]:
            lines.append(f"  problem: {p}")
        if len(r.problems) > 20:
            lines.append(f"  ... and {len(r.problems) - 20} more problems (see --json)")
    bad = sum(len(r.problems) for r in reports)
    lines.append(f"{bad} problem(s) found" if bad else "no problems found")
    # A file name that is not UTF-8 holds lone surrogates, which a strict UTF-8 terminal
    # refuses mid-report: its bytes are shown escaped (bad\xff.png) instead.
    return "\n".join(lines).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
