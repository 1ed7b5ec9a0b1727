"""`segtool evaluate ... --report DIR`: one self-contained HTML page to look at before
reading numbers: the metrics and per-class table, the confusion matrix, and the images
the model does worst on, each as image | ground truth | prediction | errors, with a
legend. Pictures are small JPEG thumbnails inside the page (data URIs), so it opens from
disk with no server, no network and no other files. Torch-free.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segtool.config import DataConfig
from segtool.data.io import read_image, read_mask
from segtool.errors import SegtoolError
from segtool.fsutil import atomic_write_text, printable
from segtool.inference.outputs import Predictor, colour_lut, overlay_image

THUMB_WIDTH = 360


def _jpeg(rgb: np.ndarray) -> str:
    h, w = rgb.shape[:2]
    if w > THUMB_WIDTH:
        rgb = cv2.resize(rgb, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise SegtoolError("cannot encode a report thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def _folder_problem(out_dir: Path) -> str | None:
    """Why `out_dir` cannot be the report folder (a file is in the way, or the nearest
    existing folder cannot be written), or None. Looks only: creates nothing."""
    page = out_dir / "index.html"
    if page.is_dir():
        return f"{page} is a folder, where the page would go"
    where = out_dir
    while not os.path.lexists(where) and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return f"{where} is a file, not a folder"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"{where} cannot be written (no permission, or a read-only file system)"
    return None


def check_report_dir(out_dir: Path) -> None:
    """Raise unless `out_dir` is, or can be made, a folder to write the page into. The CLI
    calls it before scoring, so a bad --report fails at once, not after the whole split."""
    problem = _folder_problem(Path(out_dir))
    if problem:
        raise SegtoolError(f"--report {out_dir}: {problem}; choose another folder for the report")


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, ignore_index: int) -> np.ndarray:
    """The image dimmed to grey, with wrong pixels red and unlabelled ones dark blue."""
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB) // 2
    grey[(truth != pred) & (truth != ignore_index)] = (230, 30, 30)
    grey[truth == ignore_index] = (20, 20, 90)
    return grey


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _confusion_table(report: dict[str, Any]) -> str:
    names = [c["class"] for c in report["per_class"]]
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    head = "".join(f"<th class='rot'><div>{html.escape(n)}</div></th>" for n in names)
    body = []
    for name, row in zip(names, rows):
        cells = "".join(
            f"<td style='background:rgba(31,119,180,{v:.2f});color:{'#fff' if v > 0.5 else '#222'}'>"
            f"{'' if v < 0.005 else f'{v:.2f}'}</td>"
            for v in row
        )
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table class='cm'><tr><th>true \\ predicted</th>{head}</tr>{''.join(body)}</table>"


def write_report(
    out_dir: Path,
    report: dict[str, Any],
    per_image: Sequence[tuple[str, str, float]],
    predictor: Predictor,
    data: DataConfig,
    worst: int = 8,
) -> Path:
    """Write `out_dir/index.html`; returns its path. A folder that cannot be made is a
    one-line SegtoolError, with nothing written (the page appears whole, or not at all)."""
    out_dir = Path(out_dir)
    check_report_dir(out_dir)  # checked again: the folder may have changed since scoring began
    ranked = sorted((p for p in per_image if not math.isnan(p[2])), key=lambda p: p[2])[:worst]
    lut = colour_lut(np.asarray([c.color for c in data.classes], np.uint8))
    names = [c.name for c in data.classes]
    cards = []
    for img_path, mask_path, miou in ranked:
        image, truth = read_image(Path(img_path)), read_mask(Path(mask_path), data)
        pred = predictor.predict_batch([image])[0]
        tiles = [
            ("image", image),
            ("ground truth (black: unlabelled)", overlay_image(image, truth, lut, names)),
            ("prediction", overlay_image(image, pred, lut, names)),
            ("errors (red: wrong, blue: unlabelled)", error_map(image, truth, pred, data.ignore_index)),
        ]
        figures = "".join(
            f"<figure><img src='{_jpeg(t)}' alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption></figure>"
            for c, t in tiles
        )
        cards.append(
            f"<section class='card'><h3>{html.escape(Path(img_path).name)}: mIoU {100 * miou:.1f}</h3>"
            f"<div class='row'>{figures}</div></section>"
        )
    legend = "".join(
        f"<span class='swatch'><i style='background:rgb{tuple(int(v) for v in c.color)}'></i>"
        f"{html.escape(c.name)}</span>"
        for c in data.classes
    )
    rows = "".join(
        f"<tr><td>{html.escape(c['class'])}</td><td>{_cell(c['iou'])}</td><td>{_cell(c['accuracy'])}</td>"
        f"<td>{_cell(c['dice'])}</td><td>{c['pixels']}</td></tr>"
        for c in report["per_class"]
    )
    # A backslash at a line's end joins it to the next: long lines of the page, short lines of source.
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>segtool evaluation: {html.escape(Path(report["model"]).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }} \
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child {{ text-align: left; }}
.cm td {{ width: 34px; text-align: center; font-size: 12px; }} \
.rot div {{ writing-mode: vertical-rl; transform: rotate(180deg); }}
.swatch {{ margin-right: 14px; white-space: nowrap; }} \
.swatch i {{ display: inline-block; width: 14px; height: 14px; margin-right: 4px; vertical-align: -2px; \
border: 1px solid #888; }}
.card {{ margin: 18px 0; }} .row {{ display: flex; gap: 8px; flex-wrap: wrap; }}
figure {{ margin: 0; }} figure img {{ display: block; max-width: {THUMB_WIDTH}px; }} \
figcaption {{ font-size: 12px; color: #555; }}
</style></head><body>
<h1>segtool evaluation</h1>
<p>Model <code>{html.escape(str(report["model"]))}</code> \
(sha256 <code>{html.escape(str(report.get("model_sha256", ""))[:12])}</code>),
{report["images"]} images from <code>{html.escape(report["data"])}</code>\
{f", {len(report['failed'])} unreadable" if report["failed"] else ""}.</p>
<p><b>mIoU {_cell(report["miou"])}</b>, pixel accuracy {_cell(report["pixel_accuracy"])}, \
mean accuracy {_cell(report["mean_accuracy"])}, mean Dice {_cell(report["mean_dice"])}</p>
<h2>Per class</h2>
<table><tr><th>class</th><th>IoU</th><th>accuracy</th><th>Dice</th><th>pixels</th></tr>{rows}</table>
<h2>Confusion matrix</h2><p>Each row is one true class, normalised to its pixels.</p>
{_confusion_table(report)}
<h2>The {len(cards)} images with the lowest mIoU</h2>
<p class="legend">{legend}</p>
{"".join(cards)}
</body></html>
"""
    # removed again if the page cannot be written
    made = [d for d in (out_dir, *out_dir.parents) if not os.path.lexists(d)]
    path = out_dir / "index.html"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, printable(page))  # a name that is not UTF-8, shown escaped
    except (OSError, SegtoolError) as e:  # a file in the way, no permission, a full disk
        for d in made:  # deepest first: only the empty folders this call made
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, SegtoolError):
            raise
        raise SegtoolError(
            f"--report {out_dir}: the folder cannot be made ({e.strerror}); choose another folder for the report"
        ) from None
    return path


def report_for_model(
    model: Path,
    report: dict[str, Any],
    per_image: Sequence[tuple[str, str, float]],
    out_dir: Path,
    *,
    worst: int = 8,
    device: str = "auto",
    tile: bool | None = None,
) -> Path:
    """The HTML report of `model` (a .pt checkpoint or a .onnx file, the one evaluated):
    the worst images are predicted again by the same model, the same way."""
    from segtool.inference.backends import open_predictor

    check_report_dir(Path(out_dir))  # before the model is opened again
    onnx = Path(model).suffix.lower() == ".onnx"
    predictor = open_predictor(model, backend="onnx" if onnx else "torch", device=device, tile=tile)
    return write_report(out_dir, report, per_image, predictor, predictor.data, worst)
