#!/usr/bin/env python
"""Package a trained checkpoint as segtool's built-in model (segtool/assets/camvid.pt and
the ONNX file exported from it, camvid.onnx, which predict and evaluate use by default).

    python scripts/maintainers/ship_model.py runs/camvid/best.pt --description "..." \\
        --data ../shared/datasets/camvid/val.txt [--out segtool/assets/camvid.pt]

Keeps the weights, config (classes, colours, recipe) and val metrics of the checkpoint,
adds a description and the data's terms, and drops the training run's local data paths;
then exports the ONNX file beside it, checked for parity on --data. A maintainers' tool
(scripts/maintainers/README.md). --out's default is the installed package's
assets/camvid.pt: install segtool from this checkout in editable mode (`pip install -e
".[train]"`) so that it is the checkout's segtool/assets/camvid.pt.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

from segtool.config import parse_split
from segtool.fsutil import atomic_write_bytes
from segtool.models.checkpoint import BUILTIN, checkpoint_config, inference_part, load_checkpoint, model_from_checkpoint
from segtool.training.export import export_model

TERMS = (
    "Trained on CamVid (Brostow, Fauqueur, Cipolla, Pattern Recognition Letters 2009) as prepared by "
    "the SegNet authors; the data is for research use, and so is this model."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--description", required=True)
    ap.add_argument("--out", type=Path, default=BUILTIN)
    ap.add_argument("--data", required=True, help="split for the ONNX export's parity check (e.g. CamVid's val.txt)")
    args = ap.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    if "metrics" not in ckpt or "epoch" not in ckpt:
        sys.exit(f"{args.checkpoint}: no validation metrics in it; ship a checkpoint written at a validation (best.pt)")
    cfg = checkpoint_config(ckpt, args.checkpoint)
    model_from_checkpoint(ckpt, cfg, args.checkpoint)  # refuse to ship weights that do not load
    config = cfg.to_dict()
    config["data"].update(root=None, train=None, val=None)  # paths of the training machine mean nothing elsewhere
    # A run started from (or distilled from) a .pt file on the training machine names it by
    # its stem, "camvid" for .../camvid.pt, which is what `segtool info` shows.
    for holder, key in ((config["train"], "init_from"), (config["train"].get("distill") or {}, "teacher")):
        if holder.get(key) and Path(holder[key]).suffix == ".pt":
            holder[key] = Path(holder[key]).stem
    shipped = inference_part(ckpt)  # with train.loss.calibrate's choice, where the run made one
    shipped.update(config=config, description=args.description, data_terms=TERMS)
    buf = io.BytesIO()
    torch.save(shipped, buf)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out} ({len(buf.getvalue()) / 1e6:.1f} MB, val mIoU {100 * ckpt['metrics']['miou']:.1f})")
    onnx_out = args.out.with_suffix(".onnx")
    report = export_model(args.out, onnx_out, data=parse_split(args.data))
    print(f"wrote {onnx_out} ({report.size_mb:.1f} MB, argmax agreement {100 * report.parity.agreement:.3f}%)")


if __name__ == "__main__":
    main()
