"""The training loop: flat functions, a progress bar, checkpoints that describe themselves.

Under torchrun every rank runs this loop on its share of each epoch through
DistributedDataParallel; only rank 0 prints and writes (see segtool.engine.distributed).

A run folder holds `config.yaml` (the resolved config), `metrics.csv` (one row per epoch),
`last.pt` (everything needed to resume; `last.prev.pt` is the one before it) and `best.pt`
(highest val mIoU). With `train.ema` both hold the moving average of the weights, the
model that was validated; `last.pt` also carries the trained weights to resume from.

Never losing a run: `last.pt` is also written every `train.checkpoint_every` steps or
minutes, and on SIGINT/SIGTERM after the current step. It holds the position (epoch and
batch within it) and every RNG state; the data order and each sample's augmentation are
functions of (seed, epoch, index) alone. So on a CPU a resumed run ends with exactly the
weights of one that was never stopped.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import random
import signal
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segtool.config import Config, dump_yaml
from segtool.data.datasets import SegDataset, config_split, find_pairs, require_classes
from segtool.data.doctor import quick_check
from segtool.data.loader import EpochSampler, build_loader
from segtool.data.transforms import build_train_transform
from segtool.engine.auto import resolve_auto
from segtool.engine.checkpoint import checkpoint_config, init_from_checkpoint, load_latest, save_checkpoint, teacher_model
from segtool.engine.common import eval_loader, layout
from segtool.engine.distributed import Dist, distributed, launched, restart_count
from segtool.engine.evaluate import evaluate_model
from segtool.errors import CheckpointError, ConfigError, Interrupted, SegtoolError
from segtool.faults import fault_point
from segtool.fsutil import atomic_write_text
from segtool.metrics import summarize
from segtool.models import build_model

METRIC_FIELDS = [
    "epoch", "train_loss", "lr", "val_miou", "val_pixel_accuracy", "val_mean_accuracy",
    "images_per_s", "epoch_s", "skipped_steps",
]  # fmt: skip


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    best_miou: float
    last_miou: float | None
    seconds: float
    model: torch.nn.Module  # the weights saved (with train.ema their average), unwrapped; under torchrun this rank's copy


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    # Tensors and primitives only, so the checkpoint still loads with weights_only=True.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def schedule_progress(step: int, total: int, warmup: int, anchor: tuple[int, float] = (0, 0.0)) -> float:
    """How far the decay after warmup has gone at `step` (0 to 1) when the run ends at step
    `total`. `anchor` = (step a, progress p0 there): the run was refitted to a new length at
    step a, so the decay goes on from p0 at the pace the new length leaves, and never jumps."""
    a, p0 = anchor
    a = max(a, warmup)
    if step < a:
        return 0.0 if step < warmup else p0
    return min(1.0, p0 + (1 - p0) * (step - a) / max(1, total - a))


def lr_factor(
    step: int, total: int, warmup: int, scheduler: str, power: float, anchor: tuple[int, float] = (0, 0.0)
) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then cosine, poly or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = schedule_progress(step, total, warmup, anchor)
    if scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if scheduler == "poly":
        return (1 - progress) ** power
    return 1.0


def epochs_that_fit(done: int, room_s: float, epoch_s: float, val_s: float, val_every: int, most: int) -> int:
    """How many epochs to plan in all, `done` of them already trained, when `room_s` seconds
    are left, an epoch costs `epoch_s` and a validation `val_s`: validations come every
    `val_every` epochs and after the last one, so they are charged where they fall."""
    planned, spent = done, 0.0
    while planned < most:
        n = planned + 1
        cost = epoch_s + (val_s if n % val_every == 0 else 0.0)
        # The last epoch always validates: the run must still afford that if it stops at n.
        tail = 0.0 if n % val_every == 0 else val_s
        if spent + cost + tail > room_s:
            break
        spent += cost
        planned = n
    return planned


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: Config, weight: torch.Tensor | None) -> torch.Tensor:
    ignore = cfg.data.ignore_index
    lc = cfg.train.loss
    if lc.ohem_thresh is None:
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore)
    else:
        loss = ohem_cross_entropy(logits, target, weight, ignore, lc.ohem_thresh, lc.ohem_min_kept)
    if lc.dice_weight > 0:
        valid = (target != ignore).unsqueeze(1)
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        dice = (2 * inter + 1) / (denom + 1)
        loss = loss + lc.dice_weight * (1 - dice.mean())
    return loss


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, ignore: int, t: float) -> torch.Tensor:
    """KL divergence from the teacher's class probabilities to the model's, both softened by
    temperature `t`, averaged over the labelled pixels and scaled by t^2 (so its gradients
    keep their size as t changes). Padding and unlabelled pixels teach nothing."""
    valid = target != ignore
    log_p = F.log_softmax(logits.float() / t, 1)
    log_q = F.log_softmax(teacher_logits.float() / t, 1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)
    return t * t * (kl * valid).sum() / valid.sum().clamp_min(1)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore: int, thresh: float, min_kept: float
) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels only: those whose probability of their
    true class is at most `thresh`, or, if fewer, the `min_kept` share of the labelled
    pixels with the lowest such probability. Weighted as F.cross_entropy weighs its mean."""
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction="none")
    valid = target != ignore
    safe = target.masked_fill(~valid, 0)
    with torch.no_grad():
        p_true = logits.detach().float().softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
        p_true = p_true.masked_fill(~valid, 2.0)  # above any cut: never kept
        k = max(1, int(min_kept * int(valid.sum())))
        cut = max(thresh, float(p_true.flatten().kthvalue(k).values))  # k <= labelled pixels, or 1
        keep = valid & (p_true <= cut)
    w = weight[safe] if weight is not None else torch.ones_like(per_pixel)
    return (per_pixel * keep).sum() / (w * keep).sum().clamp_min(1e-12)


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


def _prepare_out_dir(out_dir: Path, resume: bool) -> bool:
    """Check and create the run folder; returns whether the run resumes."""
    last, prev = out_dir / "last.pt", out_dir / "last.prev.pt"
    if restart_count() and (last.is_file() or prev.is_file()):
        resume = True  # torchrun --max-restarts restarted the group after a failure: continue
    if resume and not (last.is_file() or prev.is_file()):
        raise CheckpointError(f"--resume: {last} not found; start without --resume or point --out at an earlier run")
    if not resume and (last.exists() or prev.exists()):
        raise SegtoolError(f"{out_dir} already holds a run; pass --resume to continue it or --out to start a new one")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegtoolError(f"cannot create output folder {out_dir} ({e.strerror}); choose another --out") from None
    for stale in out_dir.glob(".*.tmp"):  # left by a write that a kill interrupted
        stale.unlink(missing_ok=True)
    return resume


def _load_resume(out_dir: Path, cfg: Config) -> tuple[Path, dict[str, Any]]:
    path, ckpt = load_latest([out_dir / "last.pt", out_dir / "last.prev.pt"])
    saved = checkpoint_config(ckpt, path)
    if saved.model != cfg.model or saved.data.num_classes != cfg.data.num_classes:
        raise CheckpointError(
            f"{path} was trained with another model or class list than this config; "
            f"resume with the run's own config: segtool train {out_dir / 'config.yaml'} --out {out_dir} --resume"
        )
    return path, ckpt


class WeightAverage:
    """An exponential moving average of the weights (and BatchNorm statistics), updated
    after every optimizer step: the model a run validates and saves when `train.ema` is
    set. The decay ramps up as (1 + n) / (10 + n) to `decay`, so the first steps do not
    drag the random initialisation along."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._avg = [a for a, _ in pairs if a.is_floating_point()]
        self._cur = [b for a, b in pairs if a.is_floating_point()]
        self._counts = [(a, b) for a, b in pairs if not a.is_floating_point()]  # BatchNorm's batch counters

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._avg, self._cur, 1 - d)
        for a, b in self._counts:
            a.copy_(b)

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.model.load_state_dict(weights)
        self.updates = state["updates"]


class _StopFlag:
    signum: int | None = None


@contextmanager
def _graceful_stop(quiet: bool = False) -> Iterator[_StopFlag]:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second one aborts
    (under torchrun it is ignored: the launcher itself kills ranks that do not stop)."""
    flag = _StopFlag()

    def handler(signum: int, frame: Any) -> None:
        if flag.signum is not None:
            if launched():  # Ctrl-C reaches each rank twice, from the terminal and from torchrun
                return
            raise KeyboardInterrupt
        flag.signum = signum
        if not quiet:
            tqdm.write(f"{signal.Signals(signum).name}: finishing the current step, then saving last.pt")

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay with whoever owns them
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(cfg: Config, out_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train `cfg` into `out_dir`, in this process or, under torchrun, in every rank."""
    with distributed(cfg.train.device) as ctx:
        try:
            return _train(cfg, out_dir, resume, progress and ctx.main, ctx)
        except torch.distributed.DistError as e:
            raise SegtoolError(
                f"rank {ctx.rank} lost contact with the other processes ({str(e).splitlines()[0][:120]}); "
                f"{out_dir / 'last.pt'} holds the last checkpoint: rerun the same torchrun command with --resume "
                "(with torchrun --max-restarts this happens by itself)"
            ) from None


def _train(cfg: Config, out_dir: Path, resume: bool, progress: bool, ctx: Dist) -> TrainResult:
    t0 = time.time()
    require_classes(cfg.data)
    resume = ctx.on_main(lambda: _prepare_out_dir(out_dir, resume))
    device = ctx.device
    seed_everything(cfg.train.seed)
    say = tqdm.write if ctx.main else (lambda *args, **kwargs: None)

    train_pairs = find_pairs(config_split(cfg.data, "train"), "train")
    val_split = config_split(cfg.data, "val")
    val_pairs = find_pairs(val_split, "val")
    quick_check(train_pairs + val_pairs)  # seconds, not an hour in, for a broken file
    cfg, notes = resolve_auto(cfg, train_pairs, val_pairs)
    val = eval_loader(
        cfg, val_split, batch_size=cfg.train.batch_size, workers=cfg.train.workers, rank=ctx.rank, world=ctx.world
    )
    train_set = SegDataset(train_pairs, cfg.data, build_train_transform(cfg))
    if cfg.data.cache:
        train_set.preload()
        val.dataset.preload()
    bs = cfg.train.batch_size  # per process: a step of N processes sees N x batch_size images
    sampler = EpochSampler(len(train_set), cfg.train.seed, rank=ctx.rank, world=ctx.world)
    share = sampler.num_samples  # this process's samples per epoch, the same on every rank
    drop_last = share > bs  # BatchNorm dislikes a last batch of one
    loader = build_loader(
        train_set, bs, workers=cfg.train.workers, ignore_index=cfg.data.ignore_index, sampler=sampler, drop_last=drop_last
    )

    model = build_model(cfg.model, cfg.data.num_classes)
    if cfg.train.init_from and not resume:  # a resumed run takes its weights from last.pt
        say(init_from_checkpoint(model, cfg.data.num_classes, cfg.train.init_from))
    if ctx.active and cfg.train.sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set train.sync_bn: false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # NHWC activations: about 1.3x the training images/s of the recipe's MobileNetV2 on a CPU.
    fmt = layout(cfg)
    model = model.to(device, memory_format=fmt)
    # `net` trains (under DDP its backward averages gradients over ranks); `model` is what
    # is evaluated and saved, unwrapped, so checkpoints load anywhere.
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if ctx.active else model
    optimizer = _optimizer(cfg, model)
    ema = WeightAverage(model, cfg.train.ema) if cfg.train.ema else None
    eval_model = ema.model if ema else model  # what is validated and saved for evaluate/predict
    weight = _class_weights(cfg, device)
    distill = cfg.train.distill
    teacher = teacher_model(distill.teacher, cfg).to(device, memory_format=fmt) if distill else None
    use_amp = device.type == "cuda" and cfg.train.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    steps_per_epoch = share // bs if drop_last else math.ceil(share / bs)
    warmup = min(int(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.epochs * steps_per_epoch // 2)
    budget = cfg.train.time_limit_s()
    last, prev = out_dir / "last.pt", out_dir / "last.prev.pt"
    # Where the run stands: `epoch` epochs done, plus `batch` batches of the next one.
    # `planned_epochs` is train.epochs, or with a time limit what fits in it; `train_s` is
    # the training time spent so far, across resumes.
    state: dict[str, Any] = {
        "epoch": 0, "batch": 0, "best_miou": -1.0, "history": [], "loss_sum": 0.0, "seen": 0, "skipped": 0,
        "planned_epochs": cfg.train.epochs, "train_s": 0.0, "val_s": 0.0, "vals": 0, "first_epoch_s": 0.0,
        "lr_anchor": [0, 0.0],  # see schedule_progress: where the plan last changed length
    }  # fmt: skip

    if resume:
        path, ckpt = ctx.on_main(lambda: _load_resume(out_dir, cfg))  # rank 0 reads, every rank gets it
        # With train.ema, "model" holds the average and "trained_model" the weights being trained.
        model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
        if ema and "ema" in ckpt:
            ema.load(ckpt["model"], ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        if not ctx.main:  # the saved loss and image counts are the sums over ranks: rank 0 carries them
            state.update(loss_sum=0.0, seen=0, skipped=0)
        _set_rng_state(ckpt["rng"])
        say(
            f"resuming {out_dir} from {path.name} at epoch {state['epoch'] + 1}/{state['planned_epochs']}, "
            f"batch {state['batch']}/{steps_per_epoch}"
        )
        if budget is None and cfg.train.epochs != state["planned_epochs"]:
            # Resumed with another train.epochs (and no time limit): lengthen or shorten the run.
            if cfg.train.epochs <= state["epoch"]:
                raise ConfigError(
                    f"train.epochs={cfg.train.epochs} but {out_dir} has already trained {state['epoch']} epochs; "
                    "give a larger train.epochs to continue it"
                )
            say(f"train.epochs {state['planned_epochs']} -> {cfg.train.epochs}: the lr schedule is fitted to the new length")
            state["planned_epochs"] = cfg.train.epochs
    elif ctx.active:
        say(f"{ctx.world} processes ({device.type}), {bs} images each per step: global batch {ctx.world * bs}")

    if ctx.main:
        atomic_write_text(out_dir / "config.yaml", dump_yaml(cfg))
    for note in notes if not resume else ():  # said once, when the run starts
        say(f"auto: {note}")
    names = [c.name for c in cfg.data.classes]
    every_steps, every_seconds = cfg.train.checkpoint_interval()
    clock = [time.time()]  # when train_s was last brought up to date

    def lr_at(step: int) -> float:
        total = state["planned_epochs"] * steps_per_epoch
        anchor = tuple(state["lr_anchor"])
        return cfg.train.lr * lr_factor(step, total, warmup, cfg.train.scheduler, cfg.train.poly_power, anchor)

    def plan_epochs(epoch_s: float) -> None:
        """Fit the number of epochs to the time limit from what epochs and validations cost
        so far (`epoch_s`: the epoch just trained). The first epoch also fills the image
        cache, so the plan is made after it and refitted, up or down, after every epoch:
        a run slowed for a while by other work on the machine takes the time back when the
        machine is free again. Each refit anchors the lr schedule where it stands, so the lr
        goes on decaying from there and never rises. An epoch costs the median of the epochs
        after the first: a burst of other work shortens the run by the time it took, not by
        its rate over the whole run."""
        done = state["epoch"]
        if done == 1:
            state["first_epoch_s"] = state["train_s"] - state["val_s"]
        times = [r["epoch_s"] for r in state["history"][1:]] + ([epoch_s] if done > 1 else [])
        rest_s = state["train_s"] - state["val_s"] - state["first_epoch_s"]  # epochs 2.. with their saves
        per_epoch = statistics.median(times) + (rest_s - sum(times)) / len(times) if times else state["first_epoch_s"]
        val_s = state["val_s"] / max(state["vals"], 1)
        room = budget - state["train_s"]
        fit = max(done, epochs_that_fit(done, room, per_epoch, val_s, cfg.train.val_every, cfg.train.epochs))
        planned = ctx.broadcast(fit)  # rank 0's clock decides for all
        if (done <= 3 and planned != state["planned_epochs"]) or done == 1:
            capped = ""
            if planned == cfg.train.epochs and epochs_that_fit(done, room, per_epoch, val_s, cfg.train.val_every, planned + 1) > planned:
                capped = (f" (train.epochs={cfg.train.epochs} caps it: the run ends before the time limit; "
                          "set train.epochs: auto to use all of it)")  # fmt: skip
            say(f"time limit {cfg.train.time_limit}: planning {planned} epochs{capped}")
        if planned != state["planned_epochs"]:
            step, total = done * steps_per_epoch, state["planned_epochs"] * steps_per_epoch
            state["lr_anchor"] = [step, schedule_progress(step, total, warmup, tuple(state["lr_anchor"]))]
            state["planned_epochs"] = planned

    resume_hint = f"segtool train {out_dir / 'config.yaml'} --out {out_dir} --resume"
    if ctx.active:
        resume_hint = f"torchrun --nproc_per_node {ctx.world} -m {resume_hint}"
    last_miou = None

    def totals() -> tuple[float, int, int]:
        """This epoch's loss sum, images and skipped steps so far, over all ranks."""
        t = ctx.sum(torch.tensor([state["loss_sum"], state["seen"], state["skipped"]], dtype=torch.float64))
        return t[0].item(), int(t[1]), int(t[2])

    def save_last() -> None:
        now = time.time()
        state["train_s"] += now - clock[0]
        clock[0] = now
        saved = dict(state)
        if ctx.active:
            saved["loss_sum"], saved["seen"], saved["skipped"] = totals()
        if ctx.main:
            averaged = {}
            if ema:
                averaged = {"trained_model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "ema": ema.state()}
            save_checkpoint(
                last, cfg, eval_model, keep_previous=prev, state=saved, optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(), rng=_rng_state(), **averaged,
            )  # fmt: skip

    def validate(epoch: int, row: dict[str, Any]) -> float:
        """Val metrics into the epoch's row; best.pt when they beat the best so far."""
        v0 = time.time()
        ctx.share_buffers(eval_model)
        cm = evaluate_model(eval_model, val, cfg.data.num_classes, cfg.data.ignore_index, device, progress, memory_format=fmt)
        report = summarize(ctx.sum(cm), names)
        miou = report["miou"] or 0.0
        row.update(
            val_miou=round(miou, 5),
            val_pixel_accuracy=round(report["pixel_accuracy"] or 0.0, 5),
            val_mean_accuracy=round(report["mean_accuracy"] or 0.0, 5),
        )
        if miou > state["best_miou"]:
            state["best_miou"] = miou
            if ctx.main:
                save_checkpoint(out_dir / "best.pt", cfg, eval_model, epoch=epoch + 1, metrics=report)
                fault_point("best")
        state["val_s"] += time.time() - v0
        state["vals"] += 1
        return miou

    def interrupted(signum: int) -> Interrupted:
        save_last()
        return Interrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {state['epoch'] + 1} batch {state['batch']}; "
            f"saved {last}; continue with: {resume_hint}",
            signum,
        )

    with _graceful_stop(quiet=not ctx.main) as stop:
        while state["epoch"] < state["planned_epochs"]:
            epoch, start = state["epoch"], state["batch"]
            sampler.set_epoch(epoch, start * bs)
            train_set.aug_seed = [cfg.train.seed, epoch]
            net.train()
            e0, seen0, saved_at, saved_step = time.time(), state["seen"], time.time(), start
            bar = tqdm(
                total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{state['planned_epochs']}",
                disable=not progress, unit="batch", leave=False,
            )  # fmt: skip
            batches = iter(loader)
            lr = lr_at(max(epoch * steps_per_epoch + start - 1, 0))
            for b in range(start, steps_per_epoch):
                try:
                    batch = next(batches)
                except Exception:
                    if stop.signum is not None:  # Ctrl-C also stopped the loader's workers
                        raise interrupted(stop.signum) from None
                    raise
                step = epoch * steps_per_epoch + b
                lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
                masks = batch["mask"].to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    logits = net(images)
                    loss = segmentation_loss(logits, masks, cfg, weight)
                    if teacher is not None:
                        with torch.no_grad():
                            taught = teacher(images)
                        soft = distill_loss(logits, taught, masks, cfg.data.ignore_index, distill.temperature)
                        loss = (1 - distill.weight) * loss + distill.weight * soft
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))
                save_now = bool(
                    (every_steps and b + 1 - saved_step >= every_steps)
                    or (every_seconds and time.time() - saved_at >= every_seconds)
                )
                if ctx.active:  # every rank must take the same branch, or the next collective hangs
                    bad, signum, save_any = ctx.max_ints([int(not finite), stop.signum or 0, int(save_now)])
                    finite, save_now, agreed_stop = not bad, bool(save_any), signum or None
                if finite:
                    scaler.scale(loss).backward()
                    if not use_amp:  # with AMP the scaler itself skips steps with inf gradients
                        finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)))
                if finite:
                    scaler.step(optimizer)
                    scaler.update()
                    if ema:
                        ema.update()
                    state["loss_sum"] += loss.item() * len(images)
                    state["seen"] += len(images)
                elif cfg.train.skip_nonfinite:
                    optimizer.zero_grad(set_to_none=True)
                    state["skipped"] += 1
                    say(f"warning: non-finite loss or gradients at epoch {epoch + 1} step {step}; batch skipped")
                else:
                    raise SegtoolError(
                        f"loss or gradients became NaN/inf at epoch {epoch + 1} step {step}; stopped without saving them "
                        f"(last good checkpoint: {last if last.exists() else 'none yet'}); lower train.lr, check the data, "
                        "or set train.skip_nonfinite: true"
                    )
                state["batch"] = b + 1
                fault_point("step")
                bar.update(1)
                done = state["seen"] - seen0
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{done / (time.time() - e0 + 1e-9):.1f}")
                stop_now = agreed_stop if ctx.active else stop.signum  # alone, a signal counts at once
                if stop_now is not None:
                    raise interrupted(stop_now)
                if save_now:
                    save_last()
                    saved_at, saved_step = time.time(), b + 1
            bar.close()
            epoch_s = time.time() - e0
            loss_sum, seen, skipped = totals()
            seen_now = int(ctx.sum(torch.tensor([state["seen"] - seen0])))
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": round(loss_sum / max(seen, 1), 5),
                "lr": f"{lr:.3e}",
                "images_per_s": round(seen_now / epoch_s, 2),  # all ranks together
                "epoch_s": round(epoch_s, 2),
                "skipped_steps": skipped,
            }
            # With a time limit, the first epoch always validates: its cost is part of the plan.
            if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 >= state["planned_epochs"] or (budget and epoch == 0):
                last_miou = validate(epoch, row)
            state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, seen=0, skipped=0)
            if budget:
                state["train_s"] += time.time() - clock[0]
                clock[0] = time.time()
                plan_epochs(epoch_s)
                if state["epoch"] >= state["planned_epochs"] and "val_miou" not in row:
                    last_miou = validate(epoch, row)  # the plan just made this the last epoch
            state["history"] = [*state["history"], row]
            save_last()
            if ctx.main:
                _write_metrics(out_dir / "metrics.csv", state["history"])
            shown = f" val mIoU {100 * row['val_miou']:.1f}" if "val_miou" in row else ""
            say(
                f"epoch {epoch + 1}/{state['planned_epochs']} loss {row['train_loss']:.4f}{shown} "
                f"({row['images_per_s']:.1f} img/s, {epoch_s:.1f}s)"
            )
            stop_now = ctx.max_ints([stop.signum or 0])[0] or None
            if stop_now is not None:
                raise Interrupted(
                    f"stopped by {signal.Signals(stop_now).name} after epoch {epoch + 1}; saved {last}; "
                    f"continue with: {resume_hint}",
                    stop_now,
                )
    ctx.share_buffers(eval_model)
    return TrainResult(out_dir, state["epoch"], state["best_miou"], last_miou, time.time() - t0, eval_model)
