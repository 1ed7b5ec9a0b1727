"""The training loop: flat functions, a progress bar, checkpoints that describe themselves.

A run folder holds `config.yaml` (the resolved config), `metrics.csv` (one row per epoch),
`last.pt` (everything needed to resume) and `best.pt` (highest val mIoU).
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from segtool.config import Config, dump_yaml
from segtool.data.datasets import SegDataset, config_split, find_pairs, require_classes
from segtool.data.loader import build_loader
from segtool.data.transforms import build_train_transform
from segtool.engine.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from segtool.engine.common import eval_loader, pick_device
from segtool.engine.evaluate import evaluate_model
from segtool.errors import CheckpointError, SegtoolError
from segtool.fsutil import atomic_write_text
from segtool.metrics import summarize
from segtool.models import build_model

METRIC_FIELDS = ["epoch", "train_loss", "lr", "val_miou", "val_pixel_accuracy", "val_mean_accuracy", "images_per_s", "epoch_s"]


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    best_miou: float
    last_miou: float | None
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: int, scheduler: str, power: float) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then cosine, poly or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if scheduler == "poly":
        return (1 - progress) ** power
    return 1.0


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: Config, weight: torch.Tensor | None) -> torch.Tensor:
    ignore = cfg.data.ignore_index
    loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore)
    if cfg.train.loss.dice_weight > 0:
        valid = (target != ignore).unsqueeze(1)
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        dice = (2 * inter + 1) / (denom + 1)
        loss = loss + cfg.train.loss.dice_weight * (1 - dice.mean())
    return loss


def _class_weights(cfg: Config, device: torch.device) -> torch.Tensor | None:
    w = cfg.train.loss.class_weights
    if w is None:
        return None
    if len(w) != cfg.data.num_classes:
        raise SegtoolError(
            f"train.loss.class_weights has {len(w)} values but data.classes has {cfg.data.num_classes}; give one per class"
        )
    return torch.tensor(w, dtype=torch.float32, device=device)


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    # Weight decay on conv/linear weights only: decaying BN scales and biases hurts small nets.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=t.lr)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    last = out_dir / "last.pt"
    if resume and not last.is_file():
        raise CheckpointError(f"--resume: {last} not found; start without --resume or point --out at an earlier run")
    if not resume and last.exists():
        raise SegtoolError(f"{out_dir} already holds a run; pass --resume to continue it or --out to start a new one")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegtoolError(f"cannot create output folder {out_dir} ({e.strerror}); choose another --out") from None


def train(cfg: Config, out_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    t0 = time.time()
    require_classes(cfg.data)
    _check_out_dir(out_dir, resume)
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed)

    train_set = SegDataset(find_pairs(config_split(cfg.data, "train"), "train"), cfg.data, build_train_transform(cfg))
    train_set.load(0)  # fail in a second, not after an epoch, when the split is unusable
    val = eval_loader(cfg, config_split(cfg.data, "val"))
    loader = build_loader(
        train_set,
        cfg.train.batch_size,
        shuffle=True,
        workers=cfg.train.workers,
        ignore_index=cfg.data.ignore_index,
        seed=cfg.train.seed,
        drop_last=len(train_set) > cfg.train.batch_size,  # BatchNorm dislikes a last batch of one
    )

    model = build_model(cfg.model, cfg.data.num_classes).to(device)
    optimizer = _optimizer(cfg, model)
    weight = _class_weights(cfg, device)
    use_amp = device.type == "cuda" and cfg.train.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    steps_per_epoch = len(loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup = min(int(cfg.train.warmup_epochs * steps_per_epoch), total_steps // 2)
    start_epoch, best, history = 0, -1.0, []

    if resume:
        ckpt = load_checkpoint(out_dir / "last.pt")
        saved = checkpoint_config(ckpt, out_dir / "last.pt")
        if saved.model != cfg.model or saved.data.num_classes != cfg.data.num_classes:
            raise CheckpointError(
                f"{out_dir / 'last.pt'} was trained with another model or class list than this config; "
                "resume with the run's own config.yaml"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best, history = ckpt["epoch"], ckpt["best_miou"], ckpt["history"]
        torch.set_rng_state(ckpt["rng_torch"])
        print(f"resuming {out_dir} at epoch {start_epoch + 1}/{cfg.train.epochs} (best mIoU so far {100 * max(best, 0):.1f})")

    atomic_write_text(out_dir / "config.yaml", dump_yaml(cfg))
    names = [c.name for c in cfg.data.classes]
    last_miou = None
    step = start_epoch * steps_per_epoch

    for epoch in range(start_epoch, cfg.train.epochs):
        # Shuffle order and augmentations depend only on (seed, epoch), so a resumed run
        # sees the same data in the same order as an uninterrupted one.
        loader.generator.manual_seed(cfg.train.seed + epoch)
        train_set.transform.set_random_seed(cfg.train.seed + epoch)
        model.train()
        e0, seen, loss_sum = time.time(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, unit="batch", leave=False)
        for batch in bar:
            lr = cfg.train.lr * lr_factor(step, total_steps, warmup, cfg.train.scheduler, cfg.train.poly_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = segmentation_loss(model(images), masks, cfg, weight)
            if not torch.isfinite(loss):
                raise SegtoolError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step}; nothing was saved from this epoch; "
                    f"lower train.lr or check the data (last good checkpoint: {out_dir / 'last.pt'})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            seen += len(images)
            loss_sum += loss.item() * len(images)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{seen / (time.time() - e0):.1f}")
        epoch_s = time.time() - e0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum / max(seen, 1), 5),
            "lr": f"{lr:.3e}",
            "images_per_s": round(seen / epoch_s, 2),
            "epoch_s": round(epoch_s, 2),
        }
        is_last = epoch + 1 == cfg.train.epochs
        if (epoch + 1) % cfg.train.val_every == 0 or is_last:
            cm = evaluate_model(model, val, cfg.data.num_classes, cfg.data.ignore_index, device, progress)
            report = summarize(cm, names)
            last_miou = report["miou"] or 0.0
            row.update(
                val_miou=round(last_miou, 5),
                val_pixel_accuracy=round(report["pixel_accuracy"] or 0.0, 5),
                val_mean_accuracy=round(report["mean_accuracy"] or 0.0, 5),
            )
            if last_miou > best:
                best = last_miou
                save_checkpoint(out_dir / "best.pt", cfg, model, epoch=epoch + 1, metrics=report)
        history.append(row)
        save_checkpoint(
            out_dir / "last.pt",
            cfg,
            model,
            epoch=epoch + 1,
            best_miou=best,
            history=history,
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            rng_torch=torch.get_rng_state(),
        )
        _write_metrics(out_dir / "metrics.csv", history)
        shown = f" val mIoU {100 * row['val_miou']:.1f}" if "val_miou" in row else ""
        tqdm.write(
            f"epoch {epoch + 1}/{cfg.train.epochs} loss {row['train_loss']:.4f}{shown} "
            f"({row['images_per_s']:.1f} img/s, {epoch_s:.1f}s)"
        )
    return TrainResult(out_dir, cfg.train.epochs, best, last_miou, time.time() - t0)
