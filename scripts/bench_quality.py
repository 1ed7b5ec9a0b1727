#!/usr/bin/env python
"""Quality benchmark: segtool's CamVid recipe against the models users would pick instead.

Every model trains from scratch on the same data with the same augmentations (the recipe's
albumentations pipeline) for the same wall-clock budget on this machine, is validated each
epoch inside that budget, and is scored at its best epoch on the val split at native
resolution with the same confusion-matrix code. segtool trains through its own engine
(`segtool train` with `train.time_limit`); the peers through a plain AdamW + cosine loop.
A second section measures training throughput of every model in that same plain loop.

    python scripts/bench_quality.py --data ../shared/datasets/camvid --budget 30m

Peers: torchvision lraspp_mobilenet_v3_large always; segmentation_models_pytorch Unet and
DeepLabV3Plus with a mobilenet_v2 encoder when installed (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segtool.config import load_config, seconds  # noqa: E402
from segtool.data.datasets import SegDataset, config_split, find_pairs  # noqa: E402
from segtool.data.loader import EpochSampler, build_loader  # noqa: E402
from segtool.data.transforms import build_train_transform  # noqa: E402
from segtool.engine.common import eval_loader, layout  # noqa: E402
from segtool.engine.evaluate import evaluate_model  # noqa: E402
from segtool.engine.train import train as segtool_train  # noqa: E402
from segtool.metrics import summarize  # noqa: E402
from segtool.models import build_model  # noqa: E402


class Logits(torch.nn.Module):
    """torchvision's segmentation models return {"out": logits}; the loops want a tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class PadToMultiple(torch.nn.Module):
    """smp models need inputs divisible by 32; pad, run, crop back (360x480 is not)."""

    def __init__(self, model: torch.nn.Module, multiple: int = 32):
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        out = self.model(F.pad(x, (0, pw, 0, ph)))
        return out[..., :h, :w]


def peers(num_classes: int) -> dict[str, torch.nn.Module]:
    import torchvision

    models = {
        "torchvision LR-ASPP MobileNetV3-L": Logits(
            torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        )
    }
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        print("segmentation_models_pytorch not installed: skipping its models (pip install -e '.[bench]')")
        return models
    models["smp Unet mobilenet_v2"] = PadToMultiple(smp.Unet("mobilenet_v2", encoder_weights=None, classes=num_classes))
    models["smp DeepLabV3Plus mobilenet_v2"] = PadToMultiple(
        smp.DeepLabV3Plus("mobilenet_v2", encoder_weights=None, classes=num_classes)
    )
    return models


def to_layout(model, cfg) -> torch.memory_format:
    """Put `model` in the recipe's memory layout (train.channels_last) and return it for the
    inputs. Peers get it too: NHWC is about 1.3x the images/s of segtool's model and 1.07x
    of torchvision's here."""
    fmt = layout(cfg)
    model.to(memory_format=fmt)
    return fmt


def plain_budget_loop(model, cfg, budget_s: float, lr: float) -> tuple[dict, int]:
    """AdamW + cosine-by-time with plain cross-entropy, validated as often as the recipe
    (train.val_every) inside the budget; the best validation's report."""
    fmt = to_layout(model, cfg)
    train_set = SegDataset(find_pairs(config_split(cfg.data, "train")), cfg.data, build_train_transform(cfg))
    val = eval_loader(cfg, config_split(cfg.data, "val"))
    if cfg.data.cache:  # the same decoded-once data as the recipe gets
        train_set.preload()
        val.dataset.preload()
    sampler = EpochSampler(len(train_set), cfg.train.seed)
    loader = build_loader(
        train_set, cfg.train.batch_size, workers=cfg.train.workers, ignore_index=cfg.data.ignore_index, sampler=sampler, drop_last=True
    )
    names = [c.name for c in cfg.data.classes]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    start, epoch, best, seen = time.time(), 0, None, 0
    while time.time() - start < budget_s:
        sampler.set_epoch(epoch)
        train_set.aug_seed = [cfg.train.seed, epoch]
        model.train()
        for batch in loader:
            frac = min(1.0, (time.time() - start) / budget_s)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
            images = batch["image"].contiguous(memory_format=fmt)
            loss = F.cross_entropy(model(images), batch["mask"], ignore_index=cfg.data.ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(batch["image"])
            if time.time() - start >= budget_s:
                break
        epoch += 1
        if epoch % cfg.train.val_every and time.time() - start < budget_s:
            continue
        report = summarize(evaluate_model(model, val, len(names), cfg.data.ignore_index, torch.device("cpu"), False, memory_format=fmt), names)
        print(f"  epoch {epoch}: val mIoU {100 * report['miou']:.1f} ({time.time() - start:.0f}s)", flush=True)
        if best is None or report["miou"] > best["miou"]:
            best = report
    return best, epoch


def throughput(model, cfg, steps: int) -> float:
    """Training images/s of `model` in the plain loop, on the recipe's own batches."""
    train_set = SegDataset(find_pairs(config_split(cfg.data, "train")), cfg.data, build_train_transform(cfg))
    train_set.aug_seed = [0, 0]
    batches = [
        next(iter(build_loader(train_set, cfg.train.batch_size, workers=0, ignore_index=cfg.data.ignore_index, sampler=EpochSampler(len(train_set), i))))
        for i in range(2)
    ]
    fmt = to_layout(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = None
    for i in range(steps + 2):
        if i == 2:  # the first steps warm up allocators and kernels
            t0 = time.time()
        b = batches[i % 2]
        loss = F.cross_entropy(model(b["image"].contiguous(memory_format=fmt)), b["mask"], ignore_index=cfg.data.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * cfg.train.batch_size / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CamVid folder (with train.txt and val.txt)")
    ap.add_argument("--budget", default="30m", help="wall-clock training budget per model, e.g. 30m")
    ap.add_argument("--config", default=str(ROOT / "configs" / "camvid.yaml"))
    ap.add_argument("--peer-lr", type=float, default=1e-3, help="AdamW lr of the plain loop")
    ap.add_argument("--throughput-steps", type=int, default=10)
    ap.add_argument("--skip-quality", action="store_true", help="only measure throughput")
    ap.add_argument("--train-only", nargs="*", default=None, help="train only models whose name has one of these words")
    ap.add_argument("--out", default="bench_quality_out", help="folder for runs and results.json")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for the recipe")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget_s = seconds(args.budget)
    cfg = load_config(args.config, [f"data.root={Path(args.data).resolve()}", f"train.time_limit={args.budget}", *args.set])
    k = cfg.data.num_classes
    torch.manual_seed(cfg.train.seed)
    contenders = {"segtool " + f"{cfg.model.head} w{cfg.model.width_mult} os{cfg.model.output_stride}": build_model(cfg.model, k)}
    contenders.update(peers(k))
    names = list(contenders)

    results: dict[str, dict] = {n: {} for n in names}
    for name, model in contenders.items():
        results[name]["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        results[name]["train_img_s"] = throughput(model, cfg, args.throughput_steps)
        print(f"throughput {name}: {results[name]['train_img_s']:.1f} img/s", flush=True)

    if not args.skip_quality:
        for name in names:
            if args.train_only and not any(w.lower() in name.lower() for w in args.train_only):
                continue
            print(f"training {name} for {args.budget}", flush=True)
            torch.manual_seed(cfg.train.seed)
            if name.startswith("segtool"):
                run = segtool_train(cfg, out / f"segtool-{int(time.time())}", progress=False)
                best = torch.load(run.out_dir / "best.pt", map_location="cpu", weights_only=True)["metrics"]
                epochs = run.epochs
            else:
                model = peers(k)[name]
                best, epochs = plain_budget_loop(model, cfg, budget_s, args.peer_lr)
            results[name].update(report=best, epochs=epochs)

    tv = next(n for n in names if n.startswith("torchvision"))
    crop = next((v for t in cfg.augment.train for n, v in t.items() if n == "RandomCrop"), {})
    print(f"\nCamVid val (101 images, 360x480, 11 classes), budget {args.budget} per model, batch {cfg.train.batch_size}, "
          f"crops {crop.get('height')}x{crop.get('width')}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'model':38s} {'params':>7s} {'mIoU':>6s} {'pix acc':>8s} {'epochs':>6s} {'train img/s':>11s} {'vs tv':>6s}")
    for n in names:
        r = results[n]
        rep = r.get("report") or {}
        miou = f"{100 * rep['miou']:.1f}" if rep else "-"
        acc = f"{100 * rep['pixel_accuracy']:.1f}" if rep else "-"
        ratio = r["train_img_s"] / results[tv]["train_img_s"]
        print(f"{n:38s} {r['params_m']:6.2f}M {miou:>6s} {acc:>8s} {r.get('epochs', '-'):>6} {r['train_img_s']:11.1f} {ratio:5.2f}x")
    if not args.skip_quality:
        classes = [c.name for c in cfg.data.classes]
        print("\nper-class IoU")
        print(f"{'model':38s} " + " ".join(f"{c[:6]:>6s}" for c in classes))
        for n in names:
            if "report" not in results[n]:
                continue
            per = results[n]["report"]["per_class"]
            print(f"{n:38s} " + " ".join(f"{100 * (p['iou'] or 0):6.1f}" for p in per))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
