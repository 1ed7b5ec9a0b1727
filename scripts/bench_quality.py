#!/usr/bin/env python
"""Quality benchmark: for the same training time on this machine, how good is segtool (its
defaults, or your recipe) against the model users would pick instead?

Every model trains from scratch on the same data for the same wall-clock budget on this
machine, is validated inside that budget, and is scored at native resolution with the
same evaluation as every segtool path (segtool.reporting.evaluate.score_split): on the
config's val split (its best and its last validation) and, with --test, on a held-out
split: the val-selected weights ("test mIoU") and the weights the budget ended with ("test
last"). segtool trains and is scored exactly as a user's run is: `segtool.train(CONFIG,
overrides, out=...)`, the function `segtool train` calls, with `train.time_limit` (so its
"auto" values are fitted to the data), then `segtool.load(best.pt).evaluate(TEST)` as
`segtool evaluate` does. The peers train through a plain AdamW + cosine-by-time loop with
plain cross-entropy, on the config's augmentations (--peer-augment same) or on a plain
torchvision-reference pipeline (--peer-augment plain: scale 0.5-2x, 384x384 crops, flip).
A first section measures training throughput of every model in that same plain loop.

    python scripts/bench_quality.py --data ../shared/datasets/camvid --budget 30m --side-by-side --threads 1
    python scripts/bench_quality.py --config my/config.yaml --test my/test --budget 30m --side-by-side \\
        --threads 1 --peer-augment plain

--side-by-side trains the models at once, one process each (with --threads 1 on a 2-core
machine each gets one core), so a 30-minute comparison takes 30 minutes, not 60.

Peers: torchvision lraspp_mobilenet_v3_large always; segmentation_models_pytorch Unet and
DeepLabV3Plus with a mobilenet_v2 encoder when installed. Needs segtool installed with the
train extra (pip install -e ".[train]"; ".[bench]" adds segmentation_models_pytorch).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import segtool
from segtool.config import load_config, parse_split, seconds
from segtool.data.datasets import SegDataset
from segtool.data.loader import EpochSampler, build_loader
from segtool.data.pairs import config_split, find_pairs
from segtool.data.transforms import build_train_transform
from segtool.inference.torch_backend import torch_predictor
from segtool.metrics import summarize
from segtool.models import build_model
from segtool.models.checkpoint import load_checkpoint
from segtool.models.device import memory_format
from segtool.reporting.evaluate import score_split
from segtool.training.auto import crop_of, resolve_auto

# The repository's configs/ (the default --config) when run from a checkout.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
            torchvision.models.segmentation.lraspp_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=num_classes
            )
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


def to_memory_format(model, cfg) -> torch.memory_format:
    """Put `model` in the recipe's memory layout (train.channels_last) and return it for the
    inputs. Peers get it too: NHWC is about 1.3x the images/s of segtool's model and 1.07x
    of torchvision's here."""
    fmt = memory_format(cfg)
    model.to(memory_format=fmt)
    return fmt


def plain_budget_loop(model, cfg, budget_s: float, lr: float) -> tuple[dict, int, dict, float]:
    """AdamW + cosine-by-time with plain cross-entropy, validated as often as the recipe
    (train.val_every) inside the budget; the best validation's report, the epochs trained,
    the best validation's weights and the last validation's mIoU.

    The peers' loop, kept here on purpose: segtool.train builds segtool's own network from
    the config and cannot train a torchvision or smp model, and the peers get the plain
    recipe a user of those libraries would write (no class weights, Dice, EMA or calibration),
    which is what the comparison is against. Everything around the loop is segtool's own:
    the auto values (resolve_auto), datasets, augmentations, samplers and loaders, and the
    validation (score_split + summarize, the code `segtool evaluate` runs)."""
    cfg, _ = resolve_auto(cfg, find_pairs(config_split(cfg.data, "train")), find_pairs(config_split(cfg.data, "val")))
    fmt = to_memory_format(model, cfg)
    train_set = SegDataset(find_pairs(config_split(cfg.data, "train")), cfg.data, build_train_transform(cfg))
    val = SegDataset(find_pairs(config_split(cfg.data, "val")), cfg.data)
    if cfg.data.cache:  # the same decoded-once data as the recipe gets
        train_set.preload()
        val.preload()
    sampler = EpochSampler(len(train_set), cfg.train.seed)
    loader = build_loader(
        train_set,
        cfg.train.batch_size,
        workers=cfg.train.workers,
        ignore_index=cfg.data.ignore_index,
        sampler=sampler,
        drop_last=True,
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
        predictor = torch_predictor(model, cfg, torch.device("cpu"), batch_size=cfg.train.batch_size, tile=False)
        report = summarize(score_split(predictor, val.pairs, cfg.data, read=val.load, progress=False).confusion, names)
        print(f"  epoch {epoch}: val mIoU {100 * report['miou']:.1f} ({time.time() - start:.0f}s)", flush=True)
        if best is None or report["miou"] > best["miou"]:
            best, state = report, {k: v.detach().clone() for k, v in model.state_dict().items()}
    return best, epoch, state, report["miou"]


def throughput(model, cfg, steps: int) -> float:
    """Training images/s of `model` in the plain loop, on the recipe's own batches."""
    train_set = SegDataset(find_pairs(config_split(cfg.data, "train")), cfg.data, build_train_transform(cfg))
    train_set.aug_seed = [0, 0]
    batches = [
        next(
            iter(
                build_loader(
                    train_set,
                    cfg.train.batch_size,
                    workers=0,
                    ignore_index=cfg.data.ignore_index,
                    sampler=EpochSampler(len(train_set), i),
                )
            )
        )
        for i in range(2)
    ]
    fmt = to_memory_format(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = None
    for i in range(steps + 2):
        if i == 2:  # the first steps warm up allocators and kernels
            t0 = time.time()
        b = batches[i % 2]
        loss = F.cross_entropy(
            model(b["image"].contiguous(memory_format=fmt)), b["mask"], ignore_index=cfg.data.ignore_index
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * cfg.train.batch_size / (time.time() - t0)


PLAIN_AUGMENT = [  # torchvision's reference recipe in small: random resize 0.5-2x, pad + crop 384, flip
    {"RandomScale": {"scale_limit": [-0.5, 1.0], "p": 1.0}},
    {"PadIfNeeded": {"min_height": 384, "min_width": 384}},
    {"RandomCrop": {"height": 384, "width": 384}},
    {"HorizontalFlip": {"p": 0.5}},
]


def score(model, cfg, split) -> dict:
    """The report of a peer `model` (an in-memory network, not a segtool checkpoint) on
    `split`: segtool's evaluation (score_split + summarize, as `segtool evaluate` does for
    a .pt file), on the CPU, without tiling."""
    predictor = torch_predictor(model, cfg, torch.device("cpu"), tile=False)
    scores = score_split(predictor, find_pairs(split), cfg.data, progress=False)
    return summarize(scores.confusion, [c.name for c in cfg.data.classes])


def last_validation(run_dir: Path) -> float | None:
    """The mIoU of a segtool run's last validation, from its metrics.csv."""
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    vals = [float(r["val_miou"]) for r in rows if r.get("val_miou")]
    return vals[-1] if vals else None


def segtool_scores(checkpoint: Path, test: str) -> dict:
    """`segtool evaluate CHECKPOINT --data TEST --json` in process: the checkpoint's own
    config and calibrated decisions, on the CPU as the peers are scored, without tiling
    (as the peers are)."""
    return segtool.load(checkpoint, backend="torch", device="cpu", tile=False).evaluate(test)


def train_one(name: str, cfg, args, out: Path, overrides: list[str]) -> dict:
    """Train one contender for the budget; its best validation and, with --test, the test
    reports of that same (val-selected) model and of the weights the budget ended with.
    segtool's contender is a user's run of `args.config` with `overrides`, whose resolved
    config `cfg` is."""
    torch.manual_seed(cfg.train.seed)
    k = cfg.data.num_classes
    if name.startswith("segtool"):
        # segtool's own training, as `segtool train CONFIG --set ...` runs it; it resolves
        # the same auto values (model.head included) from the same data as main() did.
        run = segtool.train(args.config, overrides, out=out / "segtool")
        best = load_checkpoint(run.best)["metrics"]  # the val report training wrote with best.pt
        out_ = {"report": best, "epochs": run.epochs, "last_miou": last_validation(run.dir)}
        if args.test:
            out_["test"], out_["test_last"] = segtool_scores(run.best, args.test), segtool_scores(run.last, args.test)
        return out_
    test = parse_split(args.test) if args.test else None
    model = peers(k)[name]
    peer_cfg = cfg
    if args.peer_augment == "plain":
        peer_cfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"train": PLAIN_AUGMENT})})
    best, epochs, state, last = plain_budget_loop(model, peer_cfg, seconds(args.budget), args.peer_lr)
    if test is not None:  # the model holds the weights the budget ended with
        test_last = score(model, cfg, test)
    model.load_state_dict(state)
    out_ = {"report": best, "epochs": epochs, "last_miou": last}
    if test is not None:
        out_["test"], out_["test_last"] = score(model, cfg, test), test_last
    return out_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data.root for the config (CamVid's folder for configs/camvid.yaml)")
    ap.add_argument("--budget", default="30m", help="wall-clock training budget per model, e.g. 30m")
    ap.add_argument(
        "--config", default=str(CONFIGS / "camvid.yaml"), help="segtool's recipe (default: configs/camvid.yaml)"
    )
    ap.add_argument(
        "--test",
        default=None,
        help="a held-out split (list file or images/masks folder) to score the models on: "
        "their val-selected and their last weights",
    )
    ap.add_argument("--peer-lr", type=float, default=1e-3, help="AdamW lr of the plain loop")
    ap.add_argument(
        "--peer-augment",
        choices=["same", "plain"],
        default="same",
        help="the peer's augmentations: the config's own, or plain (scale 0.5-2x, 384x384 crops, flip)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads per model (default: torch's choice)")
    ap.add_argument(
        "--side-by-side",
        action="store_true",
        help="train the models at once, one process each (use with --threads 1 on 2 cores)",
    )
    ap.add_argument("--throughput-steps", type=int, default=10)
    ap.add_argument("--skip-quality", action="store_true", help="only measure throughput")
    ap.add_argument("--train-only", nargs="*", default=None, help="train only models whose name has one of these words")
    ap.add_argument("--out", default="bench_quality_out", help="folder for runs and results.json")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for the recipe")
    # internal: train this contender only, for --side-by-side
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = [f"data.root={Path(args.data).resolve()}"] if args.data else []
    overrides = [*root, f"train.time_limit={args.budget}", *args.set]  # segtool's run: `segtool train CONFIG --set ...`
    cfg = load_config(args.config, overrides)
    k = cfg.data.num_classes
    # Throughput in the plain loop needs concrete settings: the recipe's, with its auto values
    # resolved; the contender's name and model need the head segtool picks (model.head: auto).
    concrete, _ = resolve_auto(
        cfg, find_pairs(config_split(cfg.data, "train")), find_pairs(config_split(cfg.data, "val"))
    )
    cfg = cfg.model_copy(update={"model": concrete.model})
    torch.manual_seed(cfg.train.seed)
    contenders = {
        "segtool " + f"{cfg.model.head} w{cfg.model.width_mult} os{cfg.model.output_stride}": build_model(cfg.model, k)
    }
    contenders.update(peers(k))
    names = list(contenders)
    if args.one:  # a child of --side-by-side
        (out / f"{args.one}.json").write_text(
            json.dumps(train_one(names[int(args.one)], cfg, args, out / args.one, overrides), default=str)
        )
        return

    results: dict[str, dict] = {n: {} for n in names}
    for name, model in contenders.items():
        results[name]["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        results[name]["train_img_s"] = throughput(model, concrete, args.throughput_steps)
        print(f"throughput {name}: {results[name]['train_img_s']:.1f} img/s", flush=True)

    chosen = [n for n in names if not args.train_only or any(w.lower() in n.lower() for w in args.train_only)]
    if not args.skip_quality and args.side_by_side:
        print(f"training {', '.join(chosen)} side by side for {args.budget}", flush=True)
        procs = {
            n: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--one", str(names.index(n))]) for n in chosen
        }
        for n, proc in procs.items():
            if proc.wait() == 0:
                results[n].update(json.loads((out / f"{names.index(n)}.json").read_text()))
            else:
                print(f"{n}: training failed (exit {proc.returncode})")
    elif not args.skip_quality:
        for name in chosen:
            print(f"training {name} for {args.budget}", flush=True)
            results[name].update(train_one(name, cfg, args, out / str(names.index(name)), overrides))

    tv = next(n for n in names if n.startswith("torchvision"))
    crop = crop_of(concrete.augment.train) or ("-", "-")
    val_n = len(find_pairs(config_split(cfg.data, "val")))
    print(
        f"\n{cfg.name}: val {val_n} images{f', test {args.test}' if args.test else ''}; "
        f"budget {args.budget} per model, "
        f"batch {cfg.train.batch_size}, segtool crops {crop[0]}x{crop[1]}, peer augment {args.peer_augment}, "
        f"{args.threads or torch.get_num_threads()} thread(s) each{', side by side' if args.side_by_side else ''}"
    )
    print(
        f"{'model':38s} {'params':>7s} {'val best':>8s} {'val last':>8s} {'test mIoU':>9s} {'test last':>9s} "
        f"{'pix acc':>8s} {'epochs':>6s} {'train img/s':>11s} {'vs tv':>6s}"
    )
    for n in names:
        r = results[n]
        rep, test = r.get("report") or {}, r.get("test") or {}
        miou = f"{100 * rep['miou']:.1f}" if rep else "-"
        tmiou = f"{100 * test['miou']:.1f}" if test else "-"
        tlast = f"{100 * r['test_last']['miou']:.1f}" if r.get("test_last") else "-"
        last = f"{100 * r['last_miou']:.1f}" if r.get("last_miou") is not None else "-"
        acc = f"{100 * (test or rep)['pixel_accuracy']:.1f}" if rep else "-"
        ratio = r["train_img_s"] / results[tv]["train_img_s"]
        print(
            f"{n:38s} {r['params_m']:6.2f}M {miou:>8s} {last:>8s} {tmiou:>9s} {tlast:>9s} "
            f"{acc:>8s} {r.get('epochs', '-'):>6} {r['train_img_s']:11.1f} {ratio:5.2f}x"
        )
    if not args.skip_quality:
        classes = [c.name for c in cfg.data.classes]
        for key in ("report", "test"):
            shown = [n for n in names if results[n].get(key)]
            if not shown:
                continue
            print(f"\nper-class IoU ({'val' if key == 'report' else 'test'})")
            print(f"{'model':38s} " + " ".join(f"{c[:6]:>6s}" for c in classes))
            for n in shown:
                per = results[n][key]["per_class"]
                print(f"{n:38s} " + " ".join(f"{100 * (p['iou'] or 0):6.1f}" for p in per))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
