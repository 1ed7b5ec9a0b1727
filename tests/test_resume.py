"""Never lose a run: kill or stop a real `segtool train` process at chosen points, resume
it, and require the very same weights as a run that was never interrupted."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import TINY_YAML
from segtool.config import SyntheticSpec
from segtool.data.synthetic import generate
from segtool.models.checkpoint import load_checkpoint

# 12 images, batch 2: 6 steps an epoch, 2 epochs, a mid-epoch checkpoint every 2 steps.
SETTINGS = [
    "--set",
    "train.epochs=2",
    "train.batch_size=2",
    "train.checkpoint_every=2",
    "augment.train=[HorizontalFlip, {RandomCrop: {height: 40, width: 56}}]",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    generate(SyntheticSpec(num_train=12, num_val=3, height=48, width=64, seed=5), root / "data")
    config = root / "c.yaml"
    config.write_text(TINY_YAML.format(root=root / "data"))
    reference = root / "reference"
    done = segtool("train", config, "--out", reference)
    assert done.returncode == 0, done.stderr
    return config, load_checkpoint(reference / "last.pt")


def segtool(*args, fault=None):
    env = {**os.environ, "SEGTOOL_FAULT": fault or ""}
    cmd = [sys.executable, "-m", "segtool", *map(str, args), "-q", *SETTINGS]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def assert_same_weights(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"
    assert a["state"]["epoch"] == b["state"]["epoch"] == 2


@pytest.mark.parametrize(
    "fault",
    [
        "step:5",  # mid-epoch, between checkpoints: steps 5 is lost and redone
        "write:3",  # inside a checkpoint write, after half the bytes
        "between-renames:2",  # last.pt moved to last.prev.pt, new one not yet in place
        "eval:1",  # during the first validation
        "best:1",  # best.pt written, last.pt not yet
    ],
)
def test_sigkill_anywhere_then_resume_is_exact(setup, tmp_path, fault):
    config, reference = setup
    out = tmp_path / "run"
    killed = segtool("train", config, "--out", out, fault=fault)
    assert killed.returncode == -signal.SIGKILL
    resumed = segtool("train", config, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_same_weights(reference, load_checkpoint(out / "last.pt"))
    assert not list(out.glob(".*.tmp"))
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_saves_and_exits_then_resumes_exactly(setup, tmp_path, sig, code):
    config, reference = setup
    out = tmp_path / "run"
    stopped = segtool("train", config, "--out", out, fault=f"step:3:{sig}")
    assert stopped.returncode == code, stopped.stderr
    assert f"stopped by {sig} at epoch 1 batch 3" in stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    assert load_checkpoint(out / "last.pt")["state"]["batch"] == 3
    resumed = segtool("train", config, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, load_checkpoint(out / "last.pt"))


def test_torn_last_checkpoint_falls_back_to_the_previous(setup, tmp_path):
    config, reference = setup
    out = tmp_path / "run"
    assert segtool("train", config, "--out", out, fault="step:9").returncode == -signal.SIGKILL
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # damaged by something outside segtool
    resumed = segtool("train", config, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{last} is damaged" in resumed.stdout and "last.prev.pt" in resumed.stdout
    assert_same_weights(reference, load_checkpoint(last))
