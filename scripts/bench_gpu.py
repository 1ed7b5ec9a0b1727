#!/usr/bin/env python
"""How fast do segtool's models train and predict on a GPU, against torchvision's LR-ASPP
MobileNetV3-Large? One run, one GPU, the same synthetic input (360x480 RGB, CamVid's size;
11 classes), random weights.

- training images/s: forward, weighted cross-entropy, backward and an AdamW step, batch
  --batch, fp32 (TF32 convolutions allowed, as segtool trains) and bf16 autocast;
- inference frames/s: forward and argmax, batch 1 and batch --batch, fp32.

Each number is the median of --repeats timed blocks after a warm-up. Prints a table with
the GPU's name; --out also writes it to a file.

    python scripts/bench_gpu.py --out gpu_bench.txt

Needs segtool installed with the train extra (pip install -e ".[train]") and a CUDA GPU
(--device cpu runs it on the CPU, slowly).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from bench_speed import Out  # the script's own folder, scripts/, is on the path when run as a script
from segtool.config import ModelConfig
from segtool.models.segmenter import build_model

H, W, CLASSES = 360, 480, 11


def models() -> dict[str, torch.nn.Module]:
    return {
        "segtool LR-ASPP x0.5 (recipe)": build_model(ModelConfig(head="lraspp"), CLASSES, pretrained=False),
        "segtool U-Net x0.5": build_model(ModelConfig(head="unet"), CLASSES, pretrained=False),
        "segtool U-Net x0.75": build_model(ModelConfig(head="unet", width_mult=0.75), CLASSES, pretrained=False),
        "torchvision LR-ASPP MobileNetV3-L": Out(
            lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=CLASSES)
        ),
    }


def timed(step, n: int, repeats: int, sync) -> float:
    """Median seconds per call of `step` over `repeats` blocks of `n` calls."""
    for _ in range(max(2, n // 2)):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


def train_rate(
    model: torch.nn.Module, device: torch.device, batch: int, amp: bool, n: int, repeats: int, sync
) -> float:
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, H, W, device=device)
    y = torch.randint(0, CLASSES, (batch, H, W), device=device)
    weight = torch.rand(CLASSES, device=device) + 0.5

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            if out.shape[-2:] != y.shape[-2:]:
                out = torch.nn.functional.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = torch.nn.functional.cross_entropy(out.float(), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / timed(step, n, repeats, sync)


@torch.no_grad()
def infer_rate(model: torch.nn.Module, device: torch.device, batch: int, n: int, repeats: int, sync) -> float:
    model = model.to(device).eval()
    x = torch.randn(batch, 3, H, W, device=device)

    def step() -> None:
        out = model(x)
        if out.shape[-2:] != (H, W):
            out = torch.nn.functional.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
        out.argmax(1)

    return batch / timed(step, n, repeats, sync)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="calls per timed block")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"{name}, torch {torch.__version__}, input {H}x{W}, batch {args.batch}, random weights",
        f"{'model':34s} {'params':>7s} {'train img/s fp32':>17s} {'train img/s bf16':>17s} "
        f"{'infer fps b1':>13s} {'infer fps b' + str(args.batch):>13s}",
    ]
    for label, model in models().items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        fp32 = train_rate(model, device, args.batch, False, args.steps, args.repeats, sync)
        bf16 = train_rate(model, device, args.batch, True, args.steps, args.repeats, sync)
        b1 = infer_rate(model, device, 1, args.steps, args.repeats, sync)
        bn = infer_rate(model, device, args.batch, args.steps, args.repeats, sync)
        lines.append(f"{label:34s} {params:6.2f}M {fp32:17.0f} {bf16:17.0f} {b1:13.0f} {bn:13.0f}")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
