#!/usr/bin/env python
"""Recipe sweep: many variants of the CamVid recipe trained at once on one GPU, each for the
number of epochs it would get in a fixed CPU budget.

A 30-minute run on the 2-core dev machine is slow to repeat, and its result moves by a point
or two from seed to seed, so comparing recipe changes one 30-minute run at a time on the CPU
says little. This script trains every variant concurrently (one process each) on a GPU for
the epochs that variant fits into the CPU budget, then prints each one's validations. The
epoch counts come from the recipe's epochs in the budget (`--epochs`, 87 for 30 minutes on
the dev machine in docs/BENCHMARKS.md's run 3, 100 in run 4) times the variant's training images/s on that
CPU relative to the recipe (a bare training step, measured there: x0.35 1.4x, 224x288
crops 0.78x, x0.75 0.64x, output stride 8 0.41x; the factors below are those, a little
lower where augmentation's share of an epoch grows). Validation comes as the recipe's
train.val_every decides (auto: every 3 epochs on the dev split). The GPU trains the same
model (fp32; cuDNN may use TF32 in convolutions), so the epoch is the unit that carries over
from the CPU, not the time.

configs/camvid.yaml is the dev protocol (train on the 406 frames outside drive 0001TP,
validate on its 62), so the sweep's numbers are on a drive no run trained on. To move the
data to a lent GPU, pack it first (scripts/maintainers/pack_camvid.py) and carry the packed folder:

    python scripts/maintainers/pack_camvid.py --data ../shared/datasets/camvid --out .gpu/camvid
    python scripts/maintainers/sweep_recipe.py --data .gpu/camvid --only base base_s1 dice05 --runs $OUT/runs --out $OUT

With --time-limit every variant trains for that long instead (train.time_limit; the GPU
job scripts/maintainers/gpu_camvid.sh runs the dev and full protocols this way). Variants combine with
"+": unet+x0.75+crop352x480. Writes summary.txt and metrics.json under --out; runs go to --runs.

A maintainers' helper (scripts/maintainers/README.md). It imports the installed segtool and
trains each variant with `python -m segtool train`, so install segtool first (`pip install -e
".[train]"`; on a lent GPU, the wheels gpu_prepare.sh puts in .whl/).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository: this file is scripts/maintainers/sweep_recipe.py


def _crop(h: int, w: int) -> list[tuple[str, object]]:
    return [
        ("augment.train.1.PadIfNeeded", {"min_height": h, "min_width": w}),
        ("augment.train.2.RandomCrop", {"height": h, "width": w}),
    ]


# name: (share of the recipe's epochs it gets in the same CPU time, overrides)
VARIANTS: dict[str, tuple[float, list[tuple[str, object]]]] = {
    "base": (1.0, []),
    "base_s1": (1.0, [("train.seed", 1)]),
    "base_s2": (1.0, [("train.seed", 2)]),
    "dice05": (1.0, [("train.loss.dice_weight", 0.5)]),
    "dice05_s1": (1.0, [("train.loss.dice_weight", 0.5), ("train.seed", 1)]),
    "lr5e-3": (1.0, [("train.lr", 0.005)]),
    "lr5e-3_s1": (1.0, [("train.lr", 0.005), ("train.seed", 1)]),
    "dice_lr5": (1.0, [("train.loss.dice_weight", 0.5), ("train.lr", 0.005)]),
    "dice_lr5_s1": (1.0, [("train.loss.dice_weight", 0.5), ("train.lr", 0.005), ("train.seed", 1)]),
    "bs16_lr5e-3": (1.0, [("train.batch_size", 16), ("train.lr", 0.005)]),
    "adamw_poly": (1.0, [("train.scheduler", "poly")]),
    "sgd_poly": (
        1.0,
        [("train.optimizer", "sgd"), ("train.lr", 0.05), ("train.weight_decay", 1e-4), ("train.scheduler", "poly")],
    ),
    "head256": (1.0, [("model.head_channels", 256)]),
    "scale_wide": (1.0, [("augment.train.0.RandomScale.scale_limit", [-0.5, 0.5])]),
    "crop224x288": (66 / 87, _crop(224, 288)),
    "x0.35": (110 / 87, [("model.width_mult", 0.35)]),
    "x0.75": (55 / 87, [("model.width_mult", 0.75)]),
    "os8": (35 / 87, [("model.output_stride", 8)]),
    # For fixed-length (not CPU-time-matched) comparisons of the shipped models' recipe: the
    # epoch share of these three in a CPU budget is not measured, so they get the full --epochs.
    "ema": (1.0, [("train.ema", 0.998)]),
    "unet": (1.0, [("model.head", "unet")]),
    "deeplabv3plus": (1.0, [("model.head", "deeplabv3plus")]),
    # Near-whole-image crops with a random scale of 0.75-1.5x, for GPU-length runs, where a
    # larger crop costs the GPU little; combine with "+", e.g. unet+crop352x480.
    "crop352x480": (1.0, [("augment.train.0.RandomScale.scale_limit", [-0.25, 0.5]), *_crop(352, 480)]),
}


def variant(name: str) -> tuple[float, list[tuple[str, object]]]:
    """A variant by name, or several joined with "+" (their overrides in order, their
    epoch shares multiplied)."""
    share, overrides = 1.0, []
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r} in {name!r}; choose from {', '.join(sorted(VARIANTS))}")
        share *= VARIANTS[part][0]
        overrides += VARIANTS[part][1]
    return share, overrides


def put(tree: dict, dotted: str, value: object) -> None:
    """Set a dotted key; numeric parts index lists (augment.train.0.RandomScale...)."""
    node: object = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def read_metrics(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    return list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CamVid folder (with train.txt and val.txt)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "camvid.yaml"))
    ap.add_argument("--epochs", type=int, default=87, help="the recipe's epochs in the CPU budget")
    ap.add_argument("--only", nargs="*", default=None, help="variants to train; join several with + (unet+x0.75)")
    ap.add_argument(
        "--time-limit",
        default=None,
        help="train each variant for this long (train.time_limit, e.g. 7m) instead of a share of --epochs",
    )
    ap.add_argument("--workers", type=int, default=None, help="train.workers for each run (default: the config's)")
    ap.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="train.val_every for each run (default: the config's; on a GPU, validation and the loaders' "
        "restart can cost more than an epoch)",
    )
    ap.add_argument(
        "--init-from",
        default=None,
        help="folder of an earlier call's runs: start each variant from its <variant>/last_weights.pt "
        "there, where there is one (train.init_from; a new schedule, no optimizer state)",
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline", type=float, default=None, help="seconds; then stop every run still going")
    ap.add_argument("--out", default="sweep_out", help="folder for summary.txt and metrics.json")
    ap.add_argument("--runs", default="sweep_runs", help="folder for the runs")
    args = ap.parse_args()

    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load(Path(args.config).read_text())
    recipe["data"]["root"] = str(Path(args.data).resolve())
    augment = recipe.setdefault("augment", {})
    if augment.get("train", "auto") == "auto":  # variants index the pipeline: spell out what auto is for 360x480
        from segtool.training.auto import auto_crop, auto_pipeline

        augment["train"] = auto_pipeline(auto_crop([(360, 480)]))
    names = args.only or list(VARIANTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs, planned = {}, {}
    t0 = time.time()
    for name in names:
        share, overrides = variant(name)
        planned[name] = "tl" if args.time_limit else str(max(1, round(args.epochs * share)))
        length = (
            [("train.epochs", "auto"), ("train.time_limit", args.time_limit)]
            if args.time_limit
            else [("train.epochs", int(planned[name])), ("train.time_limit", None)]
        )
        if args.workers is not None:
            overrides = [*overrides, ("train.workers", args.workers)]
        start = Path(args.init_from) / name / "last_weights.pt" if args.init_from else None
        if start is not None and start.is_file():
            overrides = [*overrides, ("train.init_from", str(start.resolve()))]
        if args.val_every is not None:
            overrides = [*overrides, ("train.val_every", args.val_every)]
        cfg = copy.deepcopy(recipe)
        for key, value in [
            *overrides,
            *length,
            ("train.device", args.device),
            ("train.amp", False),
            ("train.plots", False),
        ]:
            put(cfg, key, value)
        cfg_path = runs / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log = open(runs / f"{name}.log", "w")
        cmd = [sys.executable, "-m", "segtool", "train", str(cfg_path), "--out", str(runs / name), "-q"]
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    stopped: list[str] = []
    ticks = 0
    while any(p.poll() is None for p in procs.values()):
        time.sleep(2)
        ticks += 1
        now = time.time() - t0
        if ticks % 15 == 0:
            print(
                f"[{now:5.0f}s] " + " ".join(f"{n}:{len(read_metrics(runs / n))}/{planned[n]}" for n in names),
                flush=True,
            )
        if args.deadline is not None and now > args.deadline:
            for name, proc in procs.items():
                if proc.poll() is None:
                    proc.terminate()  # segtool train saves last.pt on SIGTERM
                    stopped.append(name)
            for proc in procs.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            break

    results, lines = {}, [f"{'variant':24s} epochs   best (epoch)  last   mean of the last 4 validations"]
    for name in names:
        rows = read_metrics(runs / name)
        vals = [(int(r["epoch"]), 100 * float(r["val_miou"])) for r in rows if r.get("val_miou")]
        results[name] = {"planned": planned[name], "done": len(rows), "stopped": name in stopped, "val_miou": vals}
        note = "  (stopped at the deadline)" if name in stopped else ""
        if not vals:
            lines.append(f"{name:24s} {len(rows):3d}/{planned[name]:<3s} no validation (see {runs / name}.log){note}")
            continue
        best = max(vals, key=lambda v: v[1])
        tail = [v for _, v in vals[-4:]]
        lines.append(
            f"{name:24s} {len(rows):3d}/{planned[name]:<3s} {best[1]:5.1f} ({best[0]:3d})  {vals[-1][1]:5.1f}  "
            f"{sum(tail) / len(tail):5.1f}{note}"
        )
    summary = f"{time.time() - t0:.0f}s on {args.device}\n" + "\n".join(lines) + "\n"
    print(summary)
    (out / "summary.txt").write_text(summary)
    (out / "metrics.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
