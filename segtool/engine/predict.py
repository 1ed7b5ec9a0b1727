"""Prediction over files, folders and globs: a palette mask and an overlay per image.

Each output has the input image's own size. An input that cannot be read is reported and
skipped; the rest are still written.
"""

from __future__ import annotations

import glob
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from segtool.config import Config
from segtool.data.io import IMAGE_EXTS, read_image
from segtool.data.loader import pad_collate
from segtool.data.transforms import build_eval_transform
from segtool.engine.checkpoint import load_model
from segtool.engine.common import pick_device
from segtool.engine.evaluate import native_logits
from segtool.errors import SegtoolError
from segtool.fsutil import atomic_write_bytes

OVERLAY_ALPHA = 0.5


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def collect_inputs(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by paths, folders (their images, sorted) and glob patterns."""
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not images:
                missing.append((spec, "folder holds no image files"))
            found += images
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTS]
            if not matches:
                missing.append((spec, "pattern matches no image files"))
            found += matches
        else:
            missing.append((spec, "not found"))
    unique = list(dict.fromkeys(found))
    return unique, missing


def palette(cfg: Config) -> np.ndarray:
    return np.array([c.color for c in cfg.data.classes], dtype=np.uint8)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_outputs(pred: np.ndarray, image: np.ndarray, colours: np.ndarray, mask_path: Path, overlay_path: Path) -> None:
    mask = Image.fromarray(pred.astype(np.uint8))  # "L"; putpalette turns it into "P"
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(colours)] = colours
    mask.putpalette(flat.flatten().tolist())
    blended = (image * (1 - OVERLAY_ALPHA) + colours[pred] * OVERLAY_ALPHA).astype(np.uint8)
    atomic_write_bytes(mask_path, _png(mask))
    atomic_write_bytes(overlay_path, _png(Image.fromarray(blended)))


def _output_names(paths: list[Path]) -> list[str]:
    """Output stems; inputs from different folders that share a stem get their folder prefixed."""
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{p.parent.name}_{p.stem}" if p.stem in dup else p.stem for p in paths]


@torch.inference_mode()
def predict(
    checkpoint: Path,
    inputs: list[str],
    out_dir: Path,
    batch_size: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictResult:
    cfg, model = load_model(checkpoint)
    files, missing = collect_inputs(inputs)
    result = PredictResult(failed=list(missing))
    if not files:
        return result
    device = pick_device(cfg.train.device)
    model = model.to(device).eval()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegtoolError(f"cannot create output folder {out_dir} ({e.strerror}); choose another --out") from None
    transform = build_eval_transform(cfg)
    collate = pad_collate(cfg.data.ignore_index)
    colours = palette(cfg)

    todo = []
    for path, name in zip(files, _output_names(files)):
        targets = (out_dir / f"{name}_mask.png", out_dir / f"{name}_overlay.png")
        if not overwrite and all(t.exists() for t in targets):
            result.skipped.append(path)
        else:
            todo.append((path, targets))

    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = []
        for path, targets in todo[start : start + batch_size]:
            try:
                image = read_image(path)
            except SegtoolError as e:
                result.failed.append((str(path), str(e)))
                bar.update(1)
                continue
            chunk.append((path, targets, image))
        if not chunk:
            continue
        samples = [
            {"image": transform(image=img)["image"], "mask": torch.zeros(img.shape[:2], dtype=torch.long), "index": i}
            for i, (_, _, img) in enumerate(chunk)
        ]
        batch = collate(samples)
        logits = model(batch["image"].to(device)).float().cpu()
        for i, (path, (mask_path, overlay_path), image) in enumerate(chunk):
            pred = native_logits(logits[i], batch["image_size"][i], image.shape[:2]).argmax(0).numpy()
            write_outputs(pred, image, colours, mask_path, overlay_path)
            result.written.append(mask_path)
            bar.update(1)
    bar.close()
    return result
