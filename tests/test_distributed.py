"""Training and evaluation under torchrun (DDP): 2 CPU processes on the Gloo backend.

Each test starts real torchrun processes, so each costs the start-up of three Python
interpreters that import torch (about 10 s on 2 cores)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_yaml
from segtool.cli import app
from segtool.config import SyntheticSpec, load_config
from segtool.data.loader import EpochSampler
from segtool.data.synthetic import generate
from segtool.models import build_model
from segtool.models.checkpoint import load_model
from segtool.training.loop import seed_everything, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(*args, env=None):
    done = subprocess.run(
        [*TORCHRUN, *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 20 train images: 10 per process, batch 4 -> 2 steps an epoch; 5 val images: 3 + 2.
    root = tmp_path_factory.mktemp("ddp")
    generate(SyntheticSpec(num_train=20, num_val=5, height=48, width=64, seed=11), root)
    return root


def config(tmp_path, data, **train):
    settings = {"epochs": 2, "batch_size": 4, "workers": 0, **train}
    path = tmp_path / "ddp.yaml"
    path.write_text(tiny_yaml(data, lambda c: c["train"].update(settings)))
    return path


def test_samplers_split_every_epoch_across_processes():
    shares = [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    for s in shares:
        s.set_epoch(4)
    orders = [list(s) for s in shares]
    assert [len(o) for o in orders] == [4, 4, 4]  # equal steps on every rank: 10 padded to 12
    assert set(sum(orders, [])) == set(range(10))
    assert orders != [list(s) for s in [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]]  # epoch 0 differs
    shares[1].set_epoch(4, start=2)
    assert list(shares[1]) == orders[1][2:]  # resumable mid-epoch, per rank


def test_two_process_training_keeps_ranks_identical(tmp_path, data):
    cfg_path = config(tmp_path, data)
    out = tmp_path / "run"
    done = torchrun(Path(__file__).with_name("ddp_train_worker.py"), cfg_path, out)
    assert "global batch 8" in done.stdout and done.stdout.count("epoch 2/2") == 1  # rank 0 alone prints
    w0, w1 = (torch.load(out / f"rank{r}.weights") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    cfg = load_config(cfg_path)
    seed_everything(cfg.train.seed)
    init = build_model(cfg.model, cfg.data.num_classes).state_dict()
    assert not all(torch.equal(init[k], w0[k]) for k in w0)  # it did train
    # The checkpoint holds the unwrapped model: it loads in a plain single process.
    _, model = load_model(out / "last.pt")
    assert all(torch.equal(v, w0[k]) for k, v in model.state_dict().items())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_miou"] for r in rows)


def test_two_process_evaluation_equals_one_process(tmp_path, data):
    trained = train(load_config(config(tmp_path, data, epochs=1)), tmp_path / "run", progress=False)
    ckpt = trained.out_dir / "best.pt"
    args = ["evaluate", str(ckpt), "--data", str(data / "val"), "-q"]
    single = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "one.json")])
    assert single.exit_code == 0, single.output
    # --nproc 2 runs torchrun: 5 images split 3 + 2, the confusion matrices summed.
    two = subprocess.run(
        [sys.executable, "-m", "segtool", *args, "--json", str(tmp_path / "two.json"), "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("mIoU") == 1  # one report, from rank 0
    one, both = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert both["images"] == one["images"] == 5
    assert both["confusion_matrix"] == one["confusion_matrix"]
    assert sum(map(sum, one["confusion_matrix"])) == 5 * 48 * 64
    assert both["miou"] == one["miou"]


def test_killed_rank_restarts_from_the_last_checkpoint(tmp_path, data):
    # Rank 1 is SIGKILLed in its 5th step (epoch 3 of 4); torchrun restarts the group once
    # and the run continues from last.pt instead of starting over.
    out = tmp_path / "run"
    done = torchrun(
        "--max-restarts",
        "1",
        "-m",
        "segtool",
        "train",
        config(tmp_path, data, epochs=4, checkpoint_every=2),
        "--out",
        out,
        "-q",
        env={"SEGTOOL_FAULT": "step:5:SIGKILL:1"},
    )
    assert "exitcode: -9" in done.stderr  # the kill happened
    assert "resuming" in done.stdout and "at epoch 3/4, batch 0/2" in done.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    cfg, model = load_model(out / "last.pt")
    assert cfg.train.epochs == 4 and all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )


def test_evaluation_shards_count_every_val_image_once(tiny_cfg):
    """Each of N processes scores every N-th pair; their sums are one process's whole split."""
    import numpy as np

    from segtool.data.pairs import config_split, find_pairs
    from segtool.inference.torch_backend import torch_predictor
    from segtool.models import build_model
    from segtool.reporting.evaluate import score_split

    torch.manual_seed(0)
    predictor = torch_predictor(build_model(tiny_cfg.model, 4, pretrained=False), tiny_cfg, torch.device("cpu"))
    pairs = find_pairs(config_split(tiny_cfg.data, "val"))
    whole = score_split(predictor, pairs, tiny_cfg.data, progress=False)
    shares = [score_split(predictor, pairs, tiny_cfg.data, shard=(r, 2), progress=False) for r in range(2)]
    assert sorted(p for s in shares for p, _, _ in s.per_image) == sorted(p for p, _, _ in whole.per_image)
    assert np.array_equal(shares[0].confusion + shares[1].confusion, whole.confusion)
