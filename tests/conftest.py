import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from segtool.cli import app
from segtool.config import SyntheticSpec, load_config
from segtool.data.synthetic import generate


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    # The built-in dataset is generated into a throwaway cache, never the user's.
    os.environ["SEGTOOL_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A folder-layout dataset on disk: train/ and val/, each with images/ and masks/."""
    root = tmp_path_factory.mktemp("tiny")
    generate(SyntheticSpec(num_train=8, num_val=4, height=48, width=64, seed=3), root)
    return root


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_YAML = """\
name: tiny
data:
  train: {root}/train
  val: {root}/val
  classes:
    - {{name: background, color: [0, 0, 0]}}
    - {{name: disc, color: [255, 0, 0]}}
    - {{name: box, color: [0, 255, 0]}}
    - {{name: triangle, color: [0, 0, 255]}}
model: {{head: lraspp, width_mult: 0.35, head_channels: 16}}
train: {{epochs: 1, batch_size: 4, workers: 0, plots: false}}  # figures: tested on their own (test_train)
augment:
  train:
    - HorizontalFlip: {{p: 0.5}}
"""


def tiny_yaml(root: Path, edit=None) -> str:
    """TINY_YAML for the data in `root`, changed by `edit` (a function of the parsed
    config dict): configs are edited as data, so a change to the template cannot turn an
    edit into a silent no-op."""
    cfg = yaml.safe_load(TINY_YAML.format(root=root))
    if edit is not None:
        edit(cfg)
    return yaml.safe_dump(cfg, sort_keys=False)


_TORCHLESS = """
import json, sys
from segtool.cli import main
for argv in json.loads(sys.argv[1]):
    sys.argv = ["segtool", *argv]
    try:
        main()
    except SystemExit as e:
        assert not e.code, (argv, e.code)
print("torch imported:", "torch" in sys.modules)
"""


def run_in_fresh_process(*commands) -> bool:
    """Run segtool command lines one after another in a new Python process, each expected
    to exit 0; returns whether torch got imported (the ONNX paths must not import it)."""
    import json
    import subprocess
    import sys

    argv = json.dumps([[str(a) for a in c] for c in commands])
    done = subprocess.run([sys.executable, "-c", _TORCHLESS, argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return "torch imported: True" in done.stdout


def run(*args):
    """The real CLI through Typer's CliRunner."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """A tiny U-Net run trained through the CLI, once per test module: (config, run folder)."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML.format(root=tiny_data))
    out = root / "run"
    result = run("train", config, "--out", out, "-q", "--set", "train.epochs=2", "model.head=unet")
    assert result.exit_code == 0, result.output
    assert "trained 2 epochs" in result.output
    return config, out


@pytest.fixture
def tiny_config(tmp_path, tiny_data) -> Path:
    return write_config(tmp_path / "tiny.yaml", TINY_YAML.format(root=tiny_data))


@pytest.fixture
def tiny_cfg(tiny_config):
    return load_config(tiny_config)


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def red_predictor(names=(), before_run=None):
    """A model stand-in that needs no torch: class 1 wherever the red channel is above 127
    (logits 0.5 and red / 255, through the real pre- and post-processing). `before_run` is
    called before each batch (a test's way to count calls or to fail mid-way)."""
    from segtool.inference.outputs import Predictor
    from segtool.inference.processing import InputSpec, Tiling

    def run(batch: np.ndarray) -> np.ndarray:
        if before_run is not None:
            before_run()
        red = batch[:, :1]
        return np.concatenate([np.full_like(red, 0.5), red], axis=1)

    spec = InputSpec(2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None, Tiling(above=None))
    return Predictor(run, spec, [[0, 0, 0], [255, 0, 0]], list(names), 2, 1)


def gate_report(ious, miou=None, failed=(), data_id="d1"):
    """A minimal `evaluate --json` report with these per-class IoUs (None: no pixels), for the gate tests."""
    from segtool.reporting import gates as g

    per_class = [{"class": n, "iou": v, "accuracy": v, "dice": v, "pixels": 100} for n, v in ious.items()]
    known = [v for v in ious.values() if v is not None]
    return {
        "report_version": g.REPORT_VERSION,
        "miou": miou if miou is not None else sum(known) / len(known),
        "pixel_accuracy": 0.9,
        "mean_accuracy": 0.8,
        "per_class": per_class,
        "images": 10,
        "data": "val.txt",
        "data_id": data_id,
        "failed": list(failed),
        "model": "m.pt",
        "model_sha256": "ab" * 32,
    }
