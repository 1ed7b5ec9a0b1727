"""What does batch independence cost? Images/s of the built-in model on a folder of mixed
sizes, batched only with images of their own size (segtool's way) against the old way,
zero-padding every batch to its largest image, on the same images in the same order.

    python scripts/bench_batching.py --data ../shared/datasets/camvid/val.txt --threads 2

Images come from the split's list, each resized to one of --sizes in turn (so a batch of
four holds mixed sizes); a folder of one size costs nothing extra and is shown too. Needs
segtool installed with the train extra (pip install -e ".[train]").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segtool.config import parse_split
from segtool.data.io import read_image
from segtool.data.pairs import find_pairs
from segtool.inference.processing import postprocess, preprocess, run_batched
from segtool.models.checkpoint import BUILTIN, load_model


def padded(images, model, mean, std):
    """The old path: one zero-padded batch, each image's logits cropped back."""
    inputs = [preprocess(img, mean, std, None) for img in images]
    h, w = max(x.shape[1] for x in inputs), max(x.shape[2] for x in inputs)
    batch = np.zeros((len(inputs), 3, h, w), np.float32)
    for i, x in enumerate(inputs):
        batch[i, :, : x.shape[1], : x.shape[2]] = x
    logits = model(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)).numpy()
    return [
        postprocess(lg[:, : x.shape[1], : x.shape[2]], img.shape[:2]).classes
        for lg, x, img in zip(logits, inputs, images)
    ]


def grouped(images, model, mean, std):
    """segtool's path: unpadded, batched only with images of the same size."""
    inputs = [preprocess(img, mean, std, None) for img in images]
    run = lambda b: model(torch.from_numpy(b).contiguous(memory_format=torch.channels_last)).numpy()  # noqa: E731
    return [postprocess(lg, img.shape[:2]).classes for lg, img in zip(run_batched(inputs, run), images)]


def rate(fn, images, model, mean, std, batch: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(images), batch):
            fn(images[i : i + batch], model, mean, std)
        best = max(best, len(images) / (time.perf_counter() - t))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a list file or images/masks folder")
    parser.add_argument("--checkpoint", type=Path, default=BUILTIN)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--sizes", default="360x480,240x320,480x640", help="HxW sizes the images cycle through")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, model = load_model(args.checkpoint)
    model = model.eval().to(memory_format=torch.channels_last)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    pairs = find_pairs(parse_split(args.data))[: args.images]
    base = [read_image(img) for img, _ in pairs]
    mixed = [cv2.resize(img, (sizes[i % len(sizes)][1], sizes[i % len(sizes)][0])) for i, img in enumerate(base)]
    same = [cv2.resize(img, (sizes[0][1], sizes[0][0])) for img in base]
    mean, std = cfg.data.mean, cfg.data.std
    print(
        f"{args.checkpoint.name}, {len(base)} images, batch {args.batch}, {args.threads} thread(s), "
        f"best of {args.repeats}"
    )
    print(f"{'folder':<34} {'padded img/s':>13} {'grouped img/s':>14} {'grouped/padded':>15}")
    with torch.inference_mode():
        for label, images in ((f"one size {args.sizes.split(',')[0]}", same), (f"mixed {args.sizes}", mixed)):
            p = rate(padded, images, model, mean, std, args.batch, args.repeats)
            g = rate(grouped, images, model, mean, std, args.batch, args.repeats)
            print(f"{label:<34} {p:13.1f} {g:14.1f} {g / p:14.2f}x")


if __name__ == "__main__":
    main()
