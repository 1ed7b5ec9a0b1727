"""Nothing silently wrong, round three: 0/255 masks whose foreground the ignore index
swallows, a crop larger than the images, --tta on 1-pixel strips, NaN weights in a
checkpoint, and a run folder on a full disk. Each is refused (or handled) with one line
before it can waste a run or pass a wrong result off as a good one."""

import errno
import gc
import subprocess

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run, save_png, tiny_yaml
from segtool.config import load_config
from segtool.models.tta import TestTimeAugment
from segtool.training import loop as train_mod

SWALLOWED = "give each class its stored `value` in data.classes (data.classes[0].value: 0, data.classes[1].value: 255)"


def one_line_error(result, code, *needles):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _binary(root, foreground_rows, stored=255, size=(24, 32)):
    """Microscopy-style splits: grey images, masks of 0 and `stored` (the top rows foreground)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            mask = np.zeros(size, np.uint8)
            mask[:foreground_rows] = stored
            image = np.where(mask > 0, 180, 60).astype(np.uint8) + rng.integers(0, 30, size, dtype=np.uint8)
            save_png(root / split / "images" / f"{i}.png", image)
            save_png(root / split / "masks" / f"{i}.png", mask)
    return root


BINARY_YAML = """\
name: cells
data:
  train: {root}/train
  val: {root}/val
  classes:
    - {{name: background, color: [0, 0, 0]}}
    - {{name: cell, color: [255, 255, 255]}}
model: {{head: lraspp, width_mult: 0.35, head_channels: 16}}
train: {{epochs: 1, batch_size: 2, workers: 0, plots: false}}
"""


def _config(path, root, edit=None):
    cfg = yaml.safe_load(BINARY_YAML.format(root=root))
    if edit is not None:
        edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------- 1. the ignore index swallows a class


@pytest.mark.parametrize("rows", [7, 17], ids=["foreground 29%", "foreground 71%"])
def test_train_refuses_0_255_masks_read_without_values_before_the_first_step(tmp_path, rows):
    """Both a minority foreground (beside background alone) and a majority one (most pixels
    ignored) are refused, with the scan the run makes anyway (class_weights: auto) and
    with a sample of the masks when it makes none."""
    data = _binary(tmp_path / "em", rows)
    out = tmp_path / "run"
    result = run("train", _config(tmp_path / "c.yaml", data), "--out", out, "-q")
    line = one_line_error(
        result,
        2,
        "of the train split's mask pixels are ignored (data.ignore_index 255)",
        SWALLOWED,
        "data.ignore_index: 254",
    )
    assert f"{100 * rows / 24:.0f}%" in line and "val mIoU" not in result.output and not (out / "last.pt").exists()

    def explicit(cfg):  # no auto value that reads the masks: the check reads a sample itself
        cfg["train"]["loss"] = {"class_weights": [1.0, 1.0]}
        cfg["augment"] = {"train": [{"HorizontalFlip": {"p": 0.5}}]}

    result = run("train", _config(tmp_path / "e.yaml", data, explicit), "--out", tmp_path / "run2", "-q")
    assert one_line_error(result, 2, SWALLOWED) == line


def test_train_takes_0_255_masks_once_the_classes_give_their_values(tmp_path):
    data = _binary(tmp_path / "em", 7)

    def valued(cfg):
        cfg["data"]["classes"][0]["value"], cfg["data"]["classes"][1]["value"] = 0, 255
        cfg["data"]["ignore_index"] = 254

    result = run("train", _config(tmp_path / "c.yaml", data, valued), "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0 and "trained 1 epoch" in result.output, result.output


def test_train_refuses_a_val_split_whose_foreground_is_ignored(tmp_path):
    good, bad = _binary(tmp_path / "good", 7, stored=1), _binary(tmp_path / "bad", 7)

    def mixed(cfg):
        cfg["data"]["val"] = str(bad / "val")

    result = run("train", _config(tmp_path / "c.yaml", good, mixed), "--out", tmp_path / "run", "-q")
    one_line_error(result, 2, "of the val split's mask pixels are ignored", SWALLOWED)


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    """A 2-class model trained on 0/1 masks, its ONNX export, and the same data stored 0/255."""
    root = tmp_path_factory.mktemp("binary")
    data = _binary(root / "data01", 7, stored=1)
    out = root / "run"
    result = run("train", _config(root / "c.yaml", data), "--out", out, "-q")
    assert result.exit_code == 0, result.output
    result = run("export", out / "best.pt", "--out", root / "model.onnx")
    assert result.exit_code == 0, result.output
    return out / "best.pt", root / "model.onnx", _binary(root / "data255", 7)


def test_evaluate_refuses_0_255_masks_the_model_reads_as_background_only(binary_model):
    checkpoint, onnx, data255 = binary_model
    result = run("evaluate", checkpoint, "--data", data255 / "val", "-q")
    line = one_line_error(
        result,
        2,
        "29% of the evaluated split's mask pixels",
        str(data255 / "val" / "masks"),
        SWALLOWED,
        "in the config the model was trained with, and train again",
    )
    assert "mIoU" not in result.output  # no metrics printed
    result = run("evaluate", onnx, "--data", data255 / "val", "-q")
    assert one_line_error(result, 2) == line  # the ONNX path says the same
    for model in (checkpoint, onnx):  # the 0/1 masks it was trained on still score
        result = run("evaluate", model, "--data", checkpoint.parent.parent / "data01" / "val", "-q")
        assert result.exit_code == 0 and "mIoU" in result.output, result.output


def test_ignore_rule_leaves_borders_and_sparse_labels_alone(tmp_path):
    from segtool.data.ignore_check import ignore_problem

    data = load_config(_config(tmp_path / "c.yaml", tmp_path)).data
    assert ignore_problem("val", [900, 80], 20, data) is None  # a VOC-style ignore border
    assert ignore_problem("val", [100, 100], 800, data) is None  # scribbles: every class present
    assert "80% of the val split" in ignore_problem("val", [100, 100], 800, data, advisory=True)  # check-data's report
    assert ignore_problem("val", [1000, 0], 0, data) is None  # background alone, nothing ignored
    assert "only class background has pixels" in ignore_problem("val", [1000, 0], 50, data)


# ------------------------------------------------------------- 2. a crop larger than images


def test_train_refuses_a_random_crop_larger_than_the_images_before_training(tmp_path, tiny_data):
    def crop(cfg):
        cfg["augment"]["train"] = [{"RandomCrop": {"height": 64, "width": 80}}, {"HorizontalFlip": {"p": 0.5}}]

    config = tmp_path / "crop.yaml"
    config.write_text(tiny_yaml(tiny_data, crop))
    out = tmp_path / "run"
    result = run("train", config, "--out", out, "-q")
    one_line_error(
        result,
        2,
        "augment.train[0]: RandomCrop of 64x80 (height x width) is larger than the smallest training image",
        "(48x64)",
        "use a crop of at most 48x64, or put PadIfNeeded: {min_height: 64, min_width: 80} before it",
    )
    assert "CropSizeError" not in result.output and not (out / "last.pt").exists()


def _crop_cfg(tmp_path, tiny_data, steps):
    config = tmp_path / "c.yaml"
    config.write_text(tiny_yaml(tiny_data, lambda cfg: cfg["augment"].update(train=steps)))
    return load_config(config)


def test_crop_check_follows_the_steps_before_the_crop(tmp_path, tiny_data):
    from segtool.data.transforms import crop_problem

    sizes, paths = [(48, 64), (60, 80)], [tmp_path / "a.png", tmp_path / "b.png"]

    def problem(*steps):
        return crop_problem(_crop_cfg(tmp_path, tiny_data, list(steps)), sizes, paths)

    crop = {"RandomCrop": {"height": 64, "width": 80}}
    assert problem({"PadIfNeeded": {"min_height": 64, "min_width": 80}}, crop) is None
    assert problem({"RandomCrop": {"height": 64, "width": 80, "pad_if_needed": True}}) is None
    assert problem({"RandomCrop": {"height": 48, "width": 64}}) is None
    assert problem({"Resize": {"height": 100, "width": 100}}, crop) is None
    scaled = problem(
        {"RandomScale": {"scale_limit": [-0.5, 0.0], "p": 1.0}}, {"RandomCrop": {"height": 30, "width": 30}}
    )
    assert "24x32 after the steps before it" in scaled and "at most 24x32" in scaled
    turned = problem({"RandomRotate90": {"p": 1.0}}, {"RandomCrop": {"height": 48, "width": 64}})  # 64x48 when turned
    assert turned and "RandomCrop of 48x64" in turned
    assert problem({"CenterCrop": {"height": 50, "width": 10}}) is not None
    assert problem({"ColorJitter": {}}, {"HorizontalFlip": {}}, crop) is not None


# ------------------------------------------------------------------ 3. --tta on 1-px strips


def test_tta_keeps_a_vanishing_side_at_one_pixel():
    model = torch.nn.Conv2d(3, 4, 1)
    for shape in ((1, 3, 1, 30), (1, 3, 30, 1), (1, 3, 1, 1)):
        out = TestTimeAugment(model)(torch.randn(*shape))
        assert out.shape == (1, 4, *shape[2:]) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 30, 3), (30, 1, 3)], ids=["1 px high", "1 px wide"])
def test_predict_tta_on_a_1_pixel_strip(trained, tmp_path, shape):
    _, run_dir = trained
    image = save_png(tmp_path / "strip.png", np.full(shape, 120, np.uint8))
    out = tmp_path / "p"
    result = run("predict", image, "-c", run_dir / "best.pt", "--tta", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(out / "strip_mask.png").size == (shape[1], shape[0])


# ------------------------------------------------------------ 4. NaN/inf weights at load


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_checkpoint_with_non_finite_weights_is_refused_everywhere(trained, tiny_data, tmp_path, bad):
    _, run_dir = trained
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    name = [k for k, v in ckpt["model"].items() if v.is_floating_point()][3]
    ckpt["model"][name] = ckpt["model"][name].clone().fill_(bad)
    poisoned = tmp_path / "poisoned.pt"
    torch.save(ckpt, poisoned)
    commands = [
        ["predict", tiny_data / "val" / "images", "-c", poisoned, "--out", tmp_path / "p"],
        ["evaluate", poisoned, "-q"],
        ["export", poisoned, "--out", tmp_path / "m.onnx"],
        ["info", poisoned],
    ]
    for args in commands:
        one_line_error(
            run(*args), 2, f"checkpoint {poisoned} holds NaN/inf weights (first: {name})", "another checkpoint"
        )
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------- 5. a full disk at the lock


def test_train_into_a_full_disk_is_one_line(tmp_path, tiny_config):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'mount failed'}); "
            "test_train_lock_on_a_full_disk_simulated covers the same path"
        )
    try:
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        out = disk / "run"
        result = run("train", tiny_config, "--out", out, "-q")
        one_line_error(
            result, 2, f"cannot write to the run folder {out} (No space left on device); free space on its disk"
        )
        assert not out.exists()  # no empty folder left behind
    finally:
        gc.collect()  # a failed run's open lock file would keep the mount busy
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)  # detached even if busy


def test_train_lock_on_a_full_disk_simulated(tmp_path, tiny_config, monkeypatch):
    """The same path without root: the lock file's write fails as a full disk makes it."""

    class FullFile:
        def __init__(self, path, *args, **kwargs):
            self.f = open(path, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_mod, "open", FullFile, raising=False)
    out = tmp_path / "run"
    result = run("train", tiny_config, "--out", out, "-q")
    one_line_error(result, 2, f"cannot write to the run folder {out} (No space left on device); free space on its disk")
    assert not out.exists()
