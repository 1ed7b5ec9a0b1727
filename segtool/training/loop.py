"""The training loop: flat functions, a progress bar, checkpoints that describe themselves.

Under torchrun every rank runs this loop on its share of each epoch through
DistributedDataParallel; only rank 0 prints and writes (see segtool.models.distributed).

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

import csv
import errno
import io
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: run folders go unlocked
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from segtool.config import Config, ResolvedConfig, dump_yaml
from segtool.data.datasets import SegDataset, config_split, require_classes
from segtool.data.loader import EpochSampler, build_loader
from segtool.data.pairs import find_pairs
from segtool.data.scan import scan_splits
from segtool.data.transforms import build_train_transform
from segtool.errors import CheckpointError, ConfigError, DataError, Interrupted, SegtoolError
from segtool.faults import fault_point
from segtool.fsutil import atomic_write_text
from segtool.inference.torch_backend import torch_predictor
from segtool.metrics import summarize
from segtool.models import build_model
from segtool.models.checkpoint import (
    CALIBRATION_KEYS,
    checkpoint_config,
    init_from_checkpoint,
    load_latest,
    save_checkpoint,
    teacher_model,
)
from segtool.models.device import memory_format
from segtool.models.distributed import Dist, distributed, launched, restart_count
from segtool.reporting.evaluate import score_split
from segtool.reporting.evaluate_torch import summed
from segtool.reporting.plots import Plotter
from segtool.reporting.tensorboard import TensorBoardLog
from segtool.training.auto import resolve_auto
from segtool.training.calibrate import best_share, calibration_offsets, calibration_record
from segtool.training.ema import WeightAverage
from segtool.training.losses import class_weights, distill_loss, segmentation_loss
from segtool.training.schedule import TimeBudget, lr_factor, refit_anchor

METRIC_FIELDS = [
    "epoch",
    "train_loss",
    "lr",
    "val_miou",
    "val_pixel_accuracy",
    "val_mean_accuracy",
    "images_per_s",
    "epoch_s",
    "skipped_steps",
]


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    best_miou: float
    last_miou: float | None
    seconds: float
    # the weights saved (with train.ema their average), unwrapped; under torchrun this rank's copy
    model: torch.nn.Module


@dataclass
class RunState:
    """Where a run stands: everything `last.pt` must restore besides weights, optimizer and
    RNG states. `epoch` epochs are done, plus `batch` batches of the next one;
    `planned_epochs` is train.epochs, or with a time limit what fits in it; `train_s` is the
    training time spent so far, across resumes; `loss_sum`, `seen` and `skipped` count the
    epoch under way; `lr_anchor` is where the plan last changed length (schedule_progress)."""

    planned_epochs: int
    epoch: int = 0
    batch: int = 0
    best_miou: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0
    seen: int = 0
    skipped: int = 0
    train_s: float = 0.0
    val_s: float = 0.0
    vals: int = 0
    first_epoch_s: float = 0.0
    lr_anchor: list = field(default_factory=lambda: [0, 0.0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, saved: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in saved:
                setattr(self, f.name, saved[f.name])


@dataclass
class Run:
    """What a training run is made of, set up once before the first step: its config (with
    every `auto` value resolved), data, model and optimizer, and where it writes."""

    cfg: ResolvedConfig
    ctx: Dist
    out_dir: Path
    progress: bool
    train_set: SegDataset
    sampler: EpochSampler
    loader: DataLoader
    val_set: SegDataset  # read (and with data.cache decoded once) for validation, never augmented
    model: torch.nn.Module  # unwrapped: what is saved and loads anywhere
    net: torch.nn.Module  # what trains: under DDP the wrapper whose backward averages gradients over ranks
    eval_model: torch.nn.Module  # what is validated and saved: with train.ema the average
    ema: WeightAverage | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weight: torch.Tensor | None
    teacher: torch.nn.Module | None
    fmt: torch.memory_format
    use_amp: bool
    steps_per_epoch: int
    warmup: int
    clock: float = 0.0  # when RunState.train_s was last brought up to date
    offsets: list[np.ndarray] | None = None  # train.loss.calibrate's candidate calibration offsets, None: off
    calibration: dict[str, Any] = field(default_factory=dict)  # the latest validation's choice, saved with the weights
    plotter: Plotter | None = None  # rank 0's figures of the run (train.plots)
    tb: TensorBoardLog | None = None  # rank 0's TensorBoard log (train.tensorboard)
    last_report: dict[str, Any] | None = None  # the latest validation's metrics, for the figures

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def last(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def prev(self) -> Path:
        return self.out_dir / "last.prev.pt"

    @property
    def budget(self) -> TimeBudget | None:
        """train.time_limit's planner, None without a time limit."""
        t = self.cfg.train
        limit = t.time_limit_s()
        return None if limit is None else TimeBudget(limit, t.time_limit, t.epochs, t.val_every)

    @property
    def resume_hint(self) -> str:
        hint = f"segtool train {self.out_dir / 'config.yaml'} --out {self.out_dir} --resume"
        return f"torchrun --nproc_per_node {self.ctx.world} -m {hint}" if self.ctx.active else hint

    def say(self, message: str) -> None:
        if self.ctx.main:
            tqdm.write(message)


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


def lock_run_folder(out_dir: Path) -> IO[str] | None:
    """An exclusive lock on `out_dir/.lock`, held while the returned file stays open, with
    this process's PID in it. The kernel drops the lock when its holder dies, even by
    SIGKILL, so a stale lock is simply taken over. None where there is no flock (Windows)."""
    if fcntl is None:
        return None
    try:
        f = open(out_dir / ".lock", "a+", encoding="utf-8")
    except OSError as e:  # a full disk (no room for one more file), a read-only or vanished folder
        raise _unwritable(out_dir, e) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise SegtoolError(
            f"{out_dir} is in use by another segtool train (PID {holder}); wait for it to end or choose another --out"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError as e:  # a full disk: the PID does not fit; nothing can be saved there either
        try:
            f.close()  # closes the file even when its flush fails again
        except OSError:
            pass
        raise _unwritable(out_dir, e) from None
    return f


def _unwritable(out_dir: Path, e: OSError) -> SegtoolError:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space on its disk or choose another --out" if full else "choose another --out"
    return SegtoolError(f"cannot write to the run folder {out_dir} ({e.strerror}); {fix}")


def _prepare_out_dir(out_dir: Path, resume: bool, held: ExitStack) -> bool:
    """Create and lock the run folder (the lock goes onto `held`), then check it; returns
    whether the run resumes. Locking first means two runs started at once into one folder
    cannot both find it empty."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegtoolError(f"cannot create output folder {out_dir} ({e.strerror}); choose another --out") from None
    try:
        lock = lock_run_folder(out_dir)
    except SegtoolError:
        if created:  # leave no empty folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    if lock is not None:
        held.callback(lock.close)
    last, prev = out_dir / "last.pt", out_dir / "last.prev.pt"
    if restart_count() and (last.is_file() or prev.is_file()):
        resume = True  # torchrun --max-restarts restarted the group after a failure: continue
    problem: SegtoolError | None = None
    if resume and not (last.is_file() or prev.is_file()):
        problem = CheckpointError(
            f"--resume: {last} not found; start without --resume or point --out at an earlier run"
        )
    elif not resume and (last.exists() or prev.exists()):
        problem = SegtoolError(
            f"{out_dir} already holds a run; pass --resume to continue it or --out to start a new one"
        )
    if problem:
        if created:  # leave no empty folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise problem
    for stale in out_dir.glob(".*.tmp"):  # left by a write that a kill interrupted
        stale.unlink(missing_ok=True)
    return resume


def _load_resume(out_dir: Path, cfg: Config) -> tuple[Path, dict[str, Any]]:
    path, ckpt = load_latest([out_dir / "last.pt", out_dir / "last.prev.pt"])
    saved = checkpoint_config(ckpt, path)
    if saved.model.model_dump() != cfg.model.model_dump() or saved.data.num_classes != cfg.data.num_classes:
        raise CheckpointError(
            f"{path} was trained with another model or class list than this config; "
            f"resume with the run's own config: segtool train {out_dir / 'config.yaml'} --out {out_dir} --resume"
        )
    return path, ckpt


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


# ------------------------------------------------------------------------------ set-up


def _data(cfg: Config, ctx: Dist) -> tuple[Config, list[str], SegDataset, EpochSampler, DataLoader, SegDataset]:
    """The config with its `auto` values resolved from the data (and the notes saying how),
    the training set, its sampler and loader, and the val set."""
    # One read of the data before the first step: every header (seconds, not an hour in,
    # for a broken file), each training mask decoded once for the auto values, and kept for
    # the cache, which then decodes only the images (segtool.data.scan).
    train, val = scan_splits(
        find_pairs(config_split(cfg.data, "train"), "train"), find_pairs(config_split(cfg.data, "val"), "val")
    )
    cfg, notes = resolve_auto(cfg, train, val, ctx.device.type)
    val_set = SegDataset(val.pairs, cfg.data)
    train_set = SegDataset(train.pairs, cfg.data, build_train_transform(cfg))
    if cfg.data.cache:
        train_set.preload(train.kept)
        val_set.preload(val.kept)
        train.forget()
        val.forget()
    bs = cfg.train.batch_size  # per process: a step of N processes sees N x batch_size images
    sampler = EpochSampler(len(train_set), cfg.train.seed, rank=ctx.rank, world=ctx.world)
    drop_last = sampler.num_samples > bs  # BatchNorm dislikes a last batch of one
    loader = build_loader(
        train_set,
        bs,
        workers=cfg.train.workers,
        ignore_index=cfg.data.ignore_index,
        sampler=sampler,
        drop_last=drop_last,
    )
    return cfg, notes, train_set, sampler, loader, val_set


def _build_run(cfg: Config, out_dir: Path, resume: bool, progress: bool, ctx: Dist) -> tuple[Run, list[str]]:
    """Everything the loop needs, built in a fixed order (the RNG draws of a run depend on
    it), and the `auto:` notes to print."""
    cfg, notes, train_set, sampler, loader, val_set = _data(cfg, ctx)
    device = ctx.device
    model = build_model(cfg.model, cfg.data.num_classes)
    if cfg.train.init_from and not resume:  # a resumed run takes its weights from last.pt
        note = init_from_checkpoint(model, cfg.data.num_classes, cfg.train.init_from)
        if ctx.main:
            tqdm.write(note)
    if ctx.active and cfg.train.sync_bn:
        if device.type != "cuda":
            raise ConfigError(
                "train.sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set train.sync_bn: false on CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # NHWC activations: about 1.3x the training images/s of the recipe's MobileNetV2 on a CPU.
    fmt = memory_format(cfg)
    model = model.to(device, memory_format=fmt)
    net = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if ctx.active else model
    )
    optimizer = _optimizer(cfg, model)
    ema = WeightAverage(model, cfg.train.ema) if cfg.train.ema else None
    weight = class_weights(cfg, device)
    distill = cfg.train.distill
    teacher = teacher_model(distill.teacher, cfg).to(device, memory_format=fmt) if distill else None
    use_amp = device.type == "cuda" and cfg.train.amp
    bs, share = cfg.train.batch_size, sampler.num_samples  # this process's samples per epoch, the same on every rank
    steps = share // bs if share > bs else math.ceil(share / bs)
    run = Run(
        plotter=Plotter(out_dir) if cfg.train.plots and ctx.main else None,
        tb=TensorBoardLog(out_dir) if cfg.train.tensorboard and ctx.main else None,
        cfg=cfg,
        ctx=ctx,
        out_dir=out_dir,
        progress=progress,
        train_set=train_set,
        sampler=sampler,
        loader=loader,
        val_set=val_set,
        model=model,
        net=net,
        eval_model=ema.model if ema else model,
        ema=ema,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
        weight=weight,
        teacher=teacher,
        fmt=fmt,
        use_amp=use_amp,
        steps_per_epoch=steps,
        warmup=min(int(cfg.train.warmup_epochs * steps), cfg.train.epochs * steps // 2),
        offsets=calibration_offsets(cfg),
    )
    return run, notes


def _restore(run: Run, state: RunState) -> None:
    """Weights, optimizer, position and RNG states from the run's last.pt (--resume)."""
    ctx, cfg = run.ctx, run.cfg
    path, ckpt = ctx.on_main(lambda: _load_resume(run.out_dir, cfg))  # rank 0 reads, every rank gets it
    # With train.ema, "model" holds the average and "trained_model" the weights being trained.
    run.model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
    if run.ema and "ema" in ckpt:
        run.ema.load(ckpt["model"], ckpt["ema"])
    run.calibration = {k: ckpt[k] for k in CALIBRATION_KEYS if k in ckpt}
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    state.load(ckpt["state"])
    if not ctx.main:  # the saved loss and image counts are the sums over ranks: rank 0 carries them
        state.loss_sum, state.seen, state.skipped = 0.0, 0, 0
    _set_rng_state(ckpt["rng"])
    target = state.planned_epochs if run.budget is not None else cfg.train.epochs
    if target != state.planned_epochs and target <= state.epoch:  # a shorter run than the one already trained
        raise ConfigError(
            f"train.epochs={cfg.train.epochs} but {run.out_dir} has already trained {state.epoch} epochs; "
            "give a larger train.epochs to continue it"
        )
    if state.epoch >= target:
        run.say(
            f"resuming {run.out_dir} from {path.name}: all {state.epoch} epochs are trained; "
            "a larger train.epochs continues it"
        )
    else:
        run.say(
            f"resuming {run.out_dir} from {path.name} at epoch {state.epoch + 1}/{target}, "
            f"batch {state.batch}/{run.steps_per_epoch}"
        )
    if target != state.planned_epochs:
        # Resumed with another train.epochs (and no time limit): lengthen or shorten the run.
        run.say(f"train.epochs {state.planned_epochs} -> {target}: the lr schedule is fitted to the new length")
        state.planned_epochs = target


# --------------------------------------------------------------------------- the loop


def lr_at(run: Run, state: RunState, step: int) -> float:
    t = run.cfg.train
    total = state.planned_epochs * run.steps_per_epoch
    return t.lr * lr_factor(step, total, run.warmup, t.scheduler, t.poly_power, tuple(state.lr_anchor))


def _totals(run: Run, state: RunState) -> tuple[float, int, int]:
    """This epoch's loss sum, images and skipped steps so far, over all ranks."""
    t = run.ctx.sum(torch.tensor([state.loss_sum, state.seen, state.skipped], dtype=torch.float64))
    return t[0].item(), int(t[1]), int(t[2])


def save_last(run: Run, state: RunState) -> None:
    """last.pt (the one before it kept as last.prev.pt): enough to resume exactly here."""
    now = time.time()
    state.train_s += now - run.clock
    run.clock = now
    saved = state.to_dict()
    if run.ctx.active:
        saved["loss_sum"], saved["seen"], saved["skipped"] = _totals(run, state)
    if run.ctx.main:
        averaged = {}
        if run.ema:
            trained = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
            averaged = {"trained_model": trained, "ema": run.ema.state()}
        save_checkpoint(
            run.last,
            run.cfg,
            run.eval_model,
            keep_previous=run.prev,
            state=saved,
            optimizer=run.optimizer.state_dict(),
            scaler=run.scaler.state_dict(),
            rng=_rng_state(),
            **averaged,
            **run.calibration,
        )


def validate(run: Run, state: RunState, epoch: int, row: dict[str, Any]) -> float:
    """Val metrics into the epoch's row; best.pt when they beat the best so far."""
    v0 = time.time()
    cfg, ctx = run.cfg, run.ctx
    ctx.share_buffers(run.eval_model)
    predictor = torch_predictor(run.eval_model, cfg, run.device, batch_size=cfg.train.batch_size)
    scores = score_split(
        predictor,
        run.val_set.pairs,
        cfg.data,
        read=run.val_set.load,
        offsets=run.offsets or (),
        shard=(ctx.rank, ctx.world),
        readers=max(1, cfg.train.workers),
        progress=run.progress,
    )
    scores = summed(scores, ctx)
    if scores.failed:  # evaluate reports and skips a broken pair; a run stops on it, as on a training pair
        raise DataError(scores.failed[0][1])
    names = [c.name for c in cfg.data.classes]
    if run.offsets:  # train.loss.calibrate: the best-scoring calibration share
        reports = [summarize(cm, names) for cm in scores.offset_confusion]
        chosen = best_share([r["miou"] or 0.0 for r in reports])
        report, run.calibration = reports[chosen], calibration_record(run.offsets, chosen)
    else:
        report, run.calibration = summarize(scores.confusion, names), {}
    run.last_report = report
    miou = report["miou"] or 0.0
    row.update(
        val_miou=round(miou, 5),
        val_pixel_accuracy=round(report["pixel_accuracy"] or 0.0, 5),
        val_mean_accuracy=round(report["mean_accuracy"] or 0.0, 5),
    )
    if miou > state.best_miou:
        state.best_miou = miou
        if ctx.main:
            save_checkpoint(
                run.out_dir / "best.pt", cfg, run.eval_model, epoch=epoch + 1, metrics=report, **run.calibration
            )
            fault_point("best")
    state.val_s += time.time() - v0
    state.vals += 1
    return miou


def _interrupted(run: Run, state: RunState, signum: int) -> Interrupted:
    save_last(run, state)
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} at epoch {state.epoch + 1} batch {state.batch}; "
        f"saved {run.last}; continue with: {run.resume_hint}",
        signum,
    )


def _loss(run: Run, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    cfg = run.cfg
    with torch.autocast(run.device.type, enabled=run.use_amp):
        logits = run.net(images)
        loss = segmentation_loss(logits, masks, cfg, run.weight)
        if run.teacher is not None:
            distill = cfg.train.distill
            with torch.no_grad():
                taught = run.teacher(images)
            soft = distill_loss(logits, taught, masks, cfg.data.ignore_index, distill.temperature)
            loss = (1 - distill.weight) * loss + distill.weight * soft
    return loss


def _agree(run: Run, finite: bool, signum: int | None, save_now: bool) -> tuple[bool, int | None, bool]:
    """(finite, stop signal, save now) as every rank will act on them. Alone, as they are;
    under DDP one rank's NaN, signal or save is everyone's, or the next collective hangs."""
    if not run.ctx.active:
        return finite, signum, save_now
    bad, stop, save_any = run.ctx.max_ints([int(not finite), signum or 0, int(save_now)])
    return not bad, stop or None, bool(save_any)


def _step(run: Run, state: RunState, loss: torch.Tensor, finite: bool, n_images: int, epoch: int, step: int) -> None:
    """Backward and optimizer step for a finite loss; for a non-finite loss or gradients,
    skip the batch (train.skip_nonfinite) or stop without saving them."""
    if finite:
        run.scaler.scale(loss).backward()
        if not run.use_amp:  # with AMP the scaler itself skips steps with inf gradients
            finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(run.model.parameters(), math.inf)))
    if finite:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema:
            run.ema.update()
        state.loss_sum += loss.item() * n_images
        state.seen += n_images
    elif run.cfg.train.skip_nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        state.skipped += 1
        run.say(f"warning: non-finite loss or gradients at epoch {epoch + 1} step {step}; batch skipped")
    else:
        raise SegtoolError(
            f"loss or gradients became NaN/inf at epoch {epoch + 1} step {step}; stopped without saving them "
            f"(last good checkpoint: {run.last if run.last.exists() else 'none yet'}); lower train.lr, check the data, "
            "or set train.skip_nonfinite: true"
        )


def train_one_epoch(run: Run, state: RunState, stop: _StopFlag) -> tuple[dict[str, Any], float]:
    """The rest of epoch `state.epoch` from batch `state.batch`: its metrics row (without
    validation) and its seconds. last.pt is saved every train.checkpoint_every, and on a
    signal after the current step, which then raises Interrupted."""
    epoch, start, spe, bs = state.epoch, state.batch, run.steps_per_epoch, run.cfg.train.batch_size
    run.sampler.set_epoch(epoch, start * bs)
    run.train_set.aug_seed = [run.cfg.train.seed, epoch]
    run.net.train()
    every_steps, every_seconds = run.cfg.train.checkpoint_interval()
    e0, seen0, saved_at, saved_step = time.time(), state.seen, time.time(), start
    bar = tqdm(
        total=spe,
        initial=start,
        desc=f"epoch {epoch + 1}/{state.planned_epochs}",
        disable=not run.progress,
        unit="batch",
        leave=False,
    )
    batches = iter(run.loader)
    lr = lr_at(run, state, max(epoch * spe + start - 1, 0))
    for b in range(start, spe):
        try:
            batch = next(batches)
        except Exception:
            if stop.signum is not None:  # Ctrl-C also stopped the loader's workers
                raise _interrupted(run, state, stop.signum) from None
            raise
        step = epoch * spe + b
        lr = lr_at(run, state, step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        images = batch["image"].to(run.device, non_blocking=True).contiguous(memory_format=run.fmt)
        loss = _loss(run, images, batch["mask"].to(run.device, non_blocking=True))
        run.optimizer.zero_grad(set_to_none=True)
        due = (every_steps and b + 1 - saved_step >= every_steps) or (
            every_seconds and time.time() - saved_at >= every_seconds
        )
        finite, agreed_stop, save_now = _agree(run, bool(torch.isfinite(loss)), stop.signum, bool(due))
        _step(run, state, loss, finite, len(images), epoch, step)
        state.batch = b + 1
        fault_point("step")
        stop_now = agreed_stop if run.ctx.active else stop.signum  # alone, a signal counts at once
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{(state.seen - seen0) / (time.time() - e0 + 1e-9):.1f}"
        )
        if stop_now is not None:
            raise _interrupted(run, state, stop_now)
        if save_now:
            save_last(run, state)
            saved_at, saved_step = time.time(), b + 1
    bar.close()
    epoch_s = time.time() - e0
    loss_sum, seen, skipped = _totals(run, state)
    seen_now = int(run.ctx.sum(torch.tensor([state.seen - seen0])))
    row = {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / max(seen, 1), 5),
        "lr": f"{lr:.3e}",
        "images_per_s": round(seen_now / epoch_s, 2),
        "epoch_s": round(epoch_s, 2),
        "skipped_steps": skipped,
    }  # images/s: all ranks together
    return row, epoch_s


def _plan(run: Run, state: RunState, epoch_s: float) -> None:
    """Refit a time-limited run's length (run.budget) after the epoch just trained, which
    took `epoch_s`; rank 0's clock decides for all. Each refit anchors the lr schedule where
    it stands, so the lr goes on decaying from there and never rises."""
    done = state.epoch
    if done == 1:
        state.first_epoch_s = state.train_s - state.val_s
    times = [r["epoch_s"] for r in state.history[1:]] + ([epoch_s] if done > 1 else [])
    fit = run.budget.plan(done, state.train_s, state.val_s, state.vals, state.first_epoch_s, times)
    planned, capped = run.ctx.broadcast(fit)
    if (done <= 3 and planned != state.planned_epochs) or done == 1:
        run.say(run.budget.note(planned, capped))
    if planned != state.planned_epochs:
        step, total = done * run.steps_per_epoch, state.planned_epochs * run.steps_per_epoch
        state.lr_anchor = refit_anchor(step, total, run.warmup, tuple(state.lr_anchor))
        state.planned_epochs = planned


def end_epoch(run: Run, state: RunState, row: dict[str, Any], epoch_s: float) -> float | None:
    """Validate when due, refit a time-limited plan, save last.pt and metrics.csv, and say
    how the epoch went; returns the val mIoU when the epoch validated."""
    epoch, miou = state.epoch, None
    # With a time limit, the first epoch always validates: its cost is part of the plan.
    if (epoch + 1) % run.cfg.train.val_every == 0 or epoch + 1 >= state.planned_epochs or (run.budget and not epoch):
        miou = validate(run, state, epoch, row)
    state.epoch, state.batch, state.loss_sum, state.seen, state.skipped = epoch + 1, 0, 0.0, 0, 0
    if run.budget:
        state.train_s += time.time() - run.clock
        run.clock = time.time()
        _plan(run, state, epoch_s)
        if state.epoch >= state.planned_epochs and "val_miou" not in row:
            miou = validate(run, state, epoch, row)  # the plan just made this the last epoch
    state.history = [*state.history, row]
    save_last(run, state)
    if run.ctx.main:
        _write_metrics(run.out_dir / "metrics.csv", state.history)
    if run.plotter and "val_miou" in row:
        run.plotter.update(state.history, run.last_report)
    if run.tb:
        run.tb.log(
            row,
            run.last_report if "val_miou" in row else None,
            run.eval_model,
            run.cfg,
            run.val_set.pairs,
            run.device,
            calibration_offsets=run.calibration.get(CALIBRATION_KEYS[1]),
        )
    shown = f" val mIoU {100 * row['val_miou']:.1f}" if "val_miou" in row else ""
    if shown and run.calibration.get(CALIBRATION_KEYS[0]):
        shown += f" (calibration {100 * run.calibration[CALIBRATION_KEYS[0]]:.0f}%)"
    run.say(
        f"epoch {epoch + 1}/{state.planned_epochs} loss {row['train_loss']:.4f}{shown} "
        f"({row['images_per_s']:.1f} img/s, {epoch_s:.1f}s)"
    )
    return miou


# ------------------------------------------------------------------------------ entry


def train(cfg: Config, out_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train `cfg` into `out_dir`, in this process or, under torchrun, in every rank.

    What a run holds open (rank 0's lock on the run folder, its figures and TensorBoard
    log) sits on one ExitStack and is closed however the run ends, the lock last."""
    t0 = time.time()
    with distributed(cfg.train.device) as ctx, ExitStack() as held:
        try:
            require_classes(cfg.data)
            if cfg.train.tensorboard:
                TensorBoardLog.writer_class()  # missing TensorBoard: said before the run folder is made
            resume = ctx.on_main(lambda: _prepare_out_dir(out_dir, resume, held))
            seed_everything(cfg.train.seed)
            run, notes = _build_run(cfg, out_dir, resume, progress and ctx.main, ctx)
            if run.plotter:
                held.callback(_close_plots, run.plotter)  # the figures of the last validation are on disk at return
            if run.tb:
                held.callback(run.tb.close)
            return _loop(run, RunState(planned_epochs=run.cfg.train.epochs), resume, notes, t0)
        except torch.distributed.DistError as e:
            raise SegtoolError(
                f"rank {ctx.rank} lost contact with the other processes ({str(e).splitlines()[0][:120]}); "
                f"{out_dir / 'last.pt'} holds the last checkpoint: rerun the same torchrun command with --resume "
                "(with torchrun --max-restarts this happens by itself)"
            ) from None


def _close_plots(plotter: Plotter) -> None:
    plotter.close()
    if plotter.error:
        tqdm.write(f"warning: the run's figures could not be drawn ({plotter.error}); the run itself is complete")


def _loop(run: Run, state: RunState, resume: bool, notes: list[str], t0: float) -> TrainResult:
    ctx, out_dir = run.ctx, run.out_dir
    if resume:
        _restore(run, state)
    elif ctx.active:
        run.say(
            f"{ctx.world} processes ({run.device.type}), {run.cfg.train.batch_size} images each per step: "
            f"global batch {ctx.world * run.cfg.train.batch_size}"
        )
    if ctx.main:
        atomic_write_text(out_dir / "config.yaml", dump_yaml(run.cfg))
    for note in notes if not resume else ():  # said once, when the run starts
        run.say(f"auto: {note}")
    run.clock = time.time()
    last_miou = None
    with _graceful_stop(quiet=not ctx.main) as stop:
        while state.epoch < state.planned_epochs:
            row, epoch_s = train_one_epoch(run, state, stop)
            miou = end_epoch(run, state, row, epoch_s)
            last_miou = last_miou if miou is None else miou
            stop_now = ctx.max_ints([stop.signum or 0])[0] or None
            if stop_now is not None:
                raise Interrupted(
                    f"stopped by {signal.Signals(stop_now).name} after epoch {state.epoch}; saved {run.last}; "
                    f"continue with: {run.resume_hint}",
                    stop_now,
                )
    ctx.share_buffers(run.eval_model)
    return TrainResult(out_dir, state.epoch, state.best_miou, last_miou, time.time() - t0, run.eval_model)
