#!/usr/bin/env python
"""How much does training throughput grow with N processes under torchrun (DDP) against one?

Trains the same config for a few epochs each way on this machine, in one run, and prints
training images/s (all processes together, validation excluded; the median over epochs
after the first) with the ratio to one process. `train.batch_size` is per process, so N
processes step with N times the global batch.

    python scripts/bench_ddp.py --config configs/camvid.yaml --nproc 2
    python scripts/bench_ddp.py                      # the built-in synthetic quickstart data

Needs segtool installed with the train extra (pip install -e ".[train]"); --config's
default is the checkout's configs/quickstart.yaml.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, out: Path, nproc: int, threads: int, epochs: int, extra: list[str]) -> tuple[float, float]:
    """(median training images/s over epochs 2.., wall seconds) of one training run."""
    segtool = ["-m", "segtool", "train", str(config), "--out", str(out), "-q"]
    segtool += ["--set", f"train.epochs={epochs}", f"train.val_every={epochs}", "train.time_limit=null", *extra]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, *launcher, *segtool],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if done.returncode:
        sys.exit(f"training with {nproc} process(es) failed:\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return statistics.median(float(r["images_per_s"]) for r in rows[1:] or rows), time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--nproc", type=int, default=2, help="processes for the distributed run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides for every run")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    setups = [(1, cores), (1, 1), (args.nproc, max(1, cores // args.nproc))]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (nproc, threads) in enumerate(setups):
            img_s, wall = run(args.config, Path(tmp) / str(i), nproc, threads, args.epochs, args.set)
            results.append((nproc, threads, img_s, wall))
            print(f"  {nproc} process(es) x {threads} thread(s): {img_s:.1f} img/s", file=sys.stderr)
    import torch

    base = results[0][2]
    print(f"\n{args.config.name}, {args.epochs} epochs each, {cores} cores, torch {torch.__version__}\n")
    print("| processes x threads | train img/s (all processes) | vs 1 process | wall s (incl. start-up, validation) |")
    print("|---|---|---|---|")
    for nproc, threads, img_s, wall in results:
        print(f"| {nproc} x {threads} | {img_s:.1f} | {img_s / base:.2f}x | {wall:.0f} |")


if __name__ == "__main__":
    main()
