#!/usr/bin/env python
"""How fast is each of segtool's architecture choices in ONNX Runtime, against torchvision's
LR-ASPP MobileNetV3-Large? One run, one machine: random weights, one 360x480 image (CamVid's size),
11 classes, fp32, threads = --threads. Every model is timed in turn, --rounds times; prints
each model's median ms and its ratio to torchvision's in the same round (the latency target
is a ratio), median and range over the rounds.

    python scripts/bench_heads.py --threads 2

Needs segtool installed with the train extra (pip install -e ".[train]").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from bench_speed import Out, to_onnx  # the script's own folder, scripts/, is on the path when run as a script
from segtool.config import ModelConfig
from segtool.models.segmenter import build_model

CANDIDATES = {
    "LR-ASPP x0.5 (the built-in camvid's)": {},
    "LR-ASPP x0.75 (camvid-large's)": {"width_mult": 0.75},
    "U-Net x0.5": {"head": "unet"},
    "U-Net x0.75": {"head": "unet", "width_mult": 0.75},
    "LR-ASPP x0.5, output stride 8": {"output_stride": 8},
}


def session(model: torch.nn.Module, threads: int, folder: Path, name: str) -> ort.InferenceSession:
    path = to_onnx(model, folder / f"{name}.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def block_ms(s: ort.InferenceSession, feed: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each times every model in turn")
    args = ap.parse_args()
    torch.manual_seed(0)
    feed = {"image": np.random.default_rng(0).standard_normal((1, 3, 360, 480), dtype=np.float32)}
    models = {
        "torchvision LR-ASPP MobileNetV3-L": Out(
            lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11)
        )
    }
    models.update(
        {n: build_model(ModelConfig(**{"head": "lraspp", **kw}), 11, pretrained=False) for n, kw in CANDIDATES.items()}
    )
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {n: session(m, args.threads, Path(tmp), str(i)) for i, (n, m) in enumerate(models.items())}
        for s in sessions.values():
            block_ms(s, feed, 5)  # warm-up
        # Rounds interleave the models, so a slow spell of the machine hits all of them alike;
        # each round's ratio is to the peer's time in that same round.
        ms = {n: [] for n in models}
        for _ in range(args.rounds):
            for n, s in sessions.items():
                ms[n].append(block_ms(s, feed, args.runs))
    peer = ms["torchvision LR-ASPP MobileNetV3-L"]
    print(f"{'model':40s} {'params':>7s} {'ms (median)':>12s} {'vs torchvision: median (range over rounds)':>44s}")
    for n, times in ms.items():
        ratios = [t / q for t, q in zip(times, peer)]
        print(
            f"{n:40s} {params[n]:6.2f}M {statistics.median(times):12.1f} "
            f"{statistics.median(ratios):20.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
