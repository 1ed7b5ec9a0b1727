"""The catalogue of things a user or a machine can get wrong, each answered in one line
with a non-zero exit code, no traceback, and nothing half-written."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_YAML, save_png, tiny_yaml
from segtool import fsutil
from segtool.cli import app
from segtool.config import SyntheticSpec, load_config
from segtool.data.synthetic import generate
from segtool.errors import CheckpointError, SegtoolError
from segtool.models import checkpoint as ckpt_mod
from segtool.models.checkpoint import load_checkpoint
from segtool.training import loop as train_mod
from segtool.training.loop import train

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def data(tmp_path):
    """A fresh, writable copy of a tiny folder dataset that a test may break."""
    generate(SyntheticSpec(num_train=6, num_val=3, height=48, width=64, seed=9), tmp_path / "d")
    return tmp_path / "d"


@pytest.fixture
def config(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(TINY_YAML.format(root=data))
    return path


def one_line_error(result, code, *needles):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ images and masks


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: p.write_bytes(b""), "cannot be read"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be"),
        (lambda p: p.write_bytes(b"this is text"), "cannot be read"),
    ],
    ids=["zero-byte", "truncated", "not-an-image"],
)
def test_broken_training_image_stops_before_training(config, data, tmp_path, damage, needle):
    bad = data / "train" / "images" / "0002.png"
    damage(bad)
    result = run("train", config, "--out", tmp_path / "r", "-q")
    line = one_line_error(result, 2, "0002.png", needle)
    assert "check-data" in line or "replace or remove" in line
    assert not (tmp_path / "r" / "last.pt").exists()


def test_truncated_image_found_during_training_is_named(config, data, tmp_path, monkeypatch):
    # Headers intact, pixels cut short: only a full decode notices.
    from segtool.data import doctor

    monkeypatch.setattr(doctor, "header", lambda p: ((64, 48), "RGB"))
    bad = data / "train" / "images" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:-400])
    result = run("train", config, "--out", tmp_path / "r", "-q", "--set", "train.batch_size=3")
    one_line_error(result, 2, "0001.png", "cannot be decoded")


def test_truncated_val_image_found_at_validation_is_named(config, data, tmp_path, monkeypatch):
    # As above, for a val image: evaluate reports and skips a broken pair, a training run
    # stops on it with its name, before any metric is written.
    from segtool.data import doctor

    monkeypatch.setattr(doctor, "header", lambda p: ((64, 48), "RGB"))
    bad = data / "val" / "images" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:-400])
    result = run("train", config, "--out", tmp_path / "r", "-q", "--set", "data.cache=false", "train.epochs=1")
    one_line_error(result, 2, "0001.png", "cannot be decoded")


def test_mask_missing_for_image(config, data, tmp_path):
    (data / "train" / "masks" / "0003.png").unlink()
    one_line_error(run("train", config, "--out", tmp_path / "r"), 2, "0003.png has no mask")


def test_image_missing_for_mask(config, data, tmp_path):
    (data / "val" / "images" / "0001.png").unlink()
    one_line_error(run("train", config, "--out", tmp_path / "r"), 2, "mask", "0001.png has no image")


def test_size_mismatch(config, data, tmp_path):
    save_png(data / "train" / "masks" / "0000.png", np.zeros((40, 64), np.uint8))
    one_line_error(run("train", config, "--out", tmp_path / "r"), 2, "0000.png is 40x64 but image", "is 48x64")


def test_label_out_of_range(config, data, tmp_path):
    save_png(data / "val" / "masks" / "0000.png", np.full((48, 64), 9, np.uint8))
    one_line_error(
        run("train", config, "--out", tmp_path / "r", "-q"), 2, "0000.png has values [9] outside the 4 classes"
    )


def test_rgb_mask_colour_not_in_table(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[0, 0] = [7, 7, 9]
    save_png(tmp_path / "d" / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save_png(tmp_path / "d" / "masks" / "a.png", arr)
    result = run(
        "check-data", tmp_path / "d", "--set", "data.mask_format=rgb", "data.classes=[{name: a, color: [0,0,0]}]"
    )
    assert result.exit_code == 1 and "colours not in data.classes: (7,7,9)"  # check-data: a finding in result.output


def test_cmyk_and_16bit_images_are_converted(tmp_path):
    from segtool.data.io import read_image

    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - rgb).mean() < 12
    deep = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # 16-bit: scaled by the bit depth
    Image.fromarray(deep).save(tmp_path / "d.png")
    grey = read_image(tmp_path / "d.png")
    assert grey.dtype == np.uint8 and np.array_equal(grey[..., 0], np.arange(256).reshape(16, 16))


def test_empty_split(config, data, tmp_path):
    for p in (data / "val" / "images").iterdir():
        p.unlink()
    for p in (data / "val" / "masks").iterdir():
        p.unlink()
    one_line_error(run("train", config, "--out", tmp_path / "r"), 2, "val split", "holds no image/mask pairs")


def test_list_file_bad_line_number(tmp_path, data):
    (data / "train.txt").write_text("train/images/0000.png train/masks/0000.png\noops\n")
    (tmp_path / "c.yaml").write_text(tiny_yaml(data, lambda c: c["data"].update(train=f"{data}/train.txt")))
    one_line_error(
        run("train", tmp_path / "c.yaml", "--out", tmp_path / "r"), 2, "train.txt:2: expected 'image_path mask_path'"
    )


# ------------------------------------------------------------------ config and output


def test_yaml_syntax_error_line(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: [3\n")
    one_line_error(run("train", tmp_path / "c.yaml"), 2, "c.yaml:", "YAML syntax error")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epocs=3", "did you mean 'epochs'"),
        ("train.epochs=three", "bad value for 'train.epochs'"),
        ("model.output_stride=4", "bad value for 'model.output_stride'"),
        ("train.checkpoint_every=soon", "bad value for 'train.checkpoint_every'"),
    ],
)
def test_config_value_errors(config, override, needle):
    one_line_error(run("train", config, "--set", override), 2, needle)


def test_output_folder_not_writable(config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(
        run("train", config, "--out", blocker / "run"), 2, "cannot create output folder", "choose another --out"
    )


def test_resume_without_checkpoint(config, tmp_path):
    one_line_error(run("train", config, "--out", tmp_path / "none", "--resume"), 2, "last.pt not found")


def test_checkpoint_for_another_class_count(config, tmp_path):
    out = tmp_path / "r"
    assert run("train", config, "--out", out, "-q").exit_code == 0
    five = tiny_yaml(
        config.parent / "d", lambda c: c["data"]["classes"].insert(0, {"name": "extra", "color": [9, 9, 9]})
    )
    (tmp_path / "five.yaml").write_text(five)
    one_line_error(run("train", tmp_path / "five.yaml", "--out", out, "--resume"), 2, "another model or class list")


def test_checkpoint_of_another_architecture(config, tmp_path):
    out = tmp_path / "r"
    assert run("train", config, "--out", out, "-q").exit_code == 0
    ck = load_checkpoint(out / "best.pt")
    ck["config"]["model"]["head"] = "deeplabv3plus"
    torch.save(ck, tmp_path / "other.pt")
    one_line_error(run("evaluate", tmp_path / "other.pt"), 2, "do not fit the model its config describes")


def test_checkpoint_from_another_format_version(config, tmp_path):
    out = tmp_path / "r"
    assert run("train", config, "--out", out, "-q").exit_code == 0
    ck = load_checkpoint(out / "best.pt")
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "future.pt")
    one_line_error(run("predict", out / "none.png", "-c", tmp_path / "future.pt"), 2, "format version 99")


# ------------------------------------------------------------------ disk full, NaN


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    out = tmp_path / "r"
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 2})})
    real_fsync = fsutil.os.fsync

    def fsync(fd):
        if (out / "last.pt").exists():  # epoch 1's files got through; the disk fills in epoch 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(train_mod, "_write_metrics", lambda *a: None)
    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    with pytest.raises(SegtoolError, match="No space left on device.*previous file, if any, is intact"):
        train(cfg, out, progress=False)
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    assert load_checkpoint(out / "last.pt")["state"]["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def _nan_at(step):
    real, count = train_mod.segmentation_loss, [0]

    def loss(*args):
        count[0] += 1
        value = real(*args)
        return value * float("nan") if count[0] == step else value

    return loss


def test_nan_loss_stops_naming_the_step_and_never_saves_nan(tiny_config, tmp_path, monkeypatch):
    cfg = load_config(tiny_config, ["train.epochs=2"])
    monkeypatch.setattr(train_mod, "segmentation_loss", _nan_at(3))
    with pytest.raises(SegtoolError, match=r"NaN/inf at epoch 2 step 2; .*last good checkpoint: .*last.pt"):
        train(cfg, tmp_path / "r", progress=False)
    saved = load_checkpoint(tmp_path / "r" / "last.pt")
    assert saved["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_nan_loss_skipped_when_asked(tiny_config, tmp_path, monkeypatch):
    cfg = load_config(tiny_config, ["train.epochs=2", "train.skip_nonfinite=true"])
    monkeypatch.setattr(train_mod, "segmentation_loss", _nan_at(3))
    train(cfg, tmp_path / "r", progress=False)
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert rows[2].endswith(",1")  # epoch 2 skipped one step


def test_nan_weights_are_never_written(tmp_path, tiny_cfg):
    from segtool.models import build_model

    model = build_model(tiny_cfg.model, 4)
    torch.nn.init.constant_(model.head.low_classifier.weight, float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        ckpt_mod.save_checkpoint(tmp_path / "x.pt", tiny_cfg, model)
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------ many files


def test_evaluate_skips_a_broken_pair_and_reports_it(config, data, tmp_path):
    out = tmp_path / "r"
    assert run("train", config, "--out", out, "-q").exit_code == 0
    (data / "val" / "images" / "0001.png").write_bytes(b"broken")
    result = run("evaluate", out / "best.pt", "--json", tmp_path / "rep.json", "-q")
    assert result.exit_code == 2  # unreadable data, an input error: the rest evaluated and gated
    assert "skipped" in result.output and "0001.png" in result.output and "Traceback" not in result.output
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["images"] == 2 and len(report["failed"]) == 1 and 0 <= report["miou"] <= 1
    assert report["pixels"] == 2 * 48 * 64  # the two readable pairs, every pixel labelled


# ------------------------------------------------------------------ dataset doctor


def test_check_data_lists_every_problem(config, data, tmp_path):
    (data / "train" / "masks" / "0003.png").unlink()
    (data / "train" / "images" / "0004.png").write_bytes(b"")
    save_png(data / "train" / "masks" / "0005.png", np.full((48, 64), 7, np.uint8))
    (data / "val" / "images" / "0000.png").write_bytes((data / "train" / "images" / "0000.png").read_bytes())
    (data / "val" / "masks" / "0000.png").write_bytes((data / "train" / "masks" / "0000.png").read_bytes())
    result = run("check-data", config, "--json", tmp_path / "doc.json")
    assert result.exit_code == 1
    out = result.output
    assert "0003.png has no mask" in out
    assert "0004.png" in out
    assert "0005.png has values [7]" in out
    assert "identical to" in out
    assert "4 problem(s) found" in out
    report = json.loads((tmp_path / "doc.json").read_text())
    assert [r["name"] for r in report] == ["train", "val"]
    assert report[0]["pairs"] == 5 and sum(report[1]["class_pixels"].values()) == 3 * 48 * 64


def test_check_data_clean(config):
    result = run("check-data", config)
    assert result.exit_code == 0, result.output
    assert "train: 6 pairs" in result.output and "sizes (HxW): 48x64 x6" in result.output
    assert "class pixels: background" in result.output and "no problems found" in result.output


def test_check_data_on_a_bare_folder_reports_raw_values(data):
    result = run("check-data", data / "val")
    assert result.exit_code == 0, result.output
    assert "class pixels: 0 " in result.output


# ------------------------------------------------------------------ run-folder lock


def test_two_runs_cannot_share_a_run_folder(config, tmp_path):
    out = tmp_path / "race"
    out.mkdir()
    held = train_mod.lock_run_folder(out)  # as if another `segtool train --out race` were running
    one_line_error(
        run("train", config, "--out", out, "-q"), 2, f"{out} is in use by another segtool train (PID {os.getpid()})"
    )
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    held.close()
    assert run("train", config, "--out", out, "-q").exit_code == 0


def test_the_lock_of_a_killed_run_is_taken_over(config, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    code = (
        "import os, signal, pathlib; from segtool.training.loop import lock_run_folder; "
        f"lock_run_folder(pathlib.Path({str(out)!r})); os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert (out / ".lock").read_text().strip().isdigit()  # the dead run's PID is still in the file
    assert run("train", config, "--out", out, "-q").exit_code == 0


def test_a_checkpoint_without_its_config_is_one_line(config, tmp_path):
    out = tmp_path / "r"
    assert run("train", config, "--out", out, "-q").exit_code == 0
    ck = load_checkpoint(out / "best.pt")
    del ck["config"]
    torch.save(ck, tmp_path / "bare.pt")
    for args in (
        ["info", tmp_path / "bare.pt"],
        ["evaluate", tmp_path / "bare.pt", "-q"],
        ["predict", out.parent, "-c", tmp_path / "bare.pt"],
    ):
        one_line_error(run(*args), 2, "bare.pt has no config: it cannot rebuild its model")


def test_evaluate_skips_a_list_entry_whose_mask_is_missing(config, data, tmp_path):
    out = tmp_path / "r"
    assert run("train", config, "--out", out, "-q").exit_code == 0
    lines = [f"val/images/{p.name} val/masks/{p.name}" for p in sorted((data / "val" / "images").iterdir())]
    (data / "val" / "masks" / sorted((data / "val" / "images").iterdir())[1].name).unlink()
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    result = run("evaluate", out / "best.pt", "--data", data / "val.txt", "--json", tmp_path / "rep.json", "-q")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "skipped " in result.output and "val.txt:2: mask" in result.output and "not found" in result.output
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["images"] == 2 and report["pixels"] == 2 * 48 * 64 and len(report["failed"]) == 1


def _binary_split(root):
    """Microscopy-style pairs: grey images, masks of 0 and 255 (mostly 255)."""
    for i in range(2):
        mask = np.full((16, 16), 255, np.uint8)
        mask[:5] = 0
        save_png(root / "images" / f"{i}.png", np.full((16, 16), 90, np.uint8))
        save_png(root / "masks" / f"{i}.png", mask)
    return root


def test_check_data_exits_1_when_most_pixels_are_ignored(tmp_path):
    split = _binary_split(tmp_path / "em")
    classes = "data.classes=[{name: background, color: [0, 0, 0]}, {name: cell, color: [255, 255, 255]}]"
    result = run("check-data", split, "--set", classes)
    assert result.exit_code == 1
    assert "69% of the" in result.output and "give each class its stored `value`" in result.output
    valued = (
        "data.classes=[{name: background, color: [0, 0, 0], value: 0}, "
        "{name: cell, color: [255, 255, 255], value: 255}]"
    )
    result = run("check-data", split, "--set", valued, "data.ignore_index=254")
    assert result.exit_code == 0, result.output
    assert "background 31.2%, cell 68.8%" in result.output


def test_check_data_on_a_bare_split_decodes_masks_as_training_would(tmp_path):
    root = tmp_path / "aerial"
    colours = np.zeros((4, 4, 3), np.uint8)
    colours[:, 2:] = (0, 200, 0)
    save_png(root / "images" / "t.png", np.zeros((4, 4, 3), np.uint8))
    save_png(root / "masks" / "t.png", colours)
    (root / "list.txt").write_text("images/t.png masks/t.png\n")
    result = run("check-data", root / "list.txt", "--set", "data.mask_format=rgb")
    assert result.exit_code == 0, result.output
    assert "(0,0,0) 50.0%" in result.output and "(0,200,0) 50.0%" in result.output
    result = run("check-data", root / "list.txt")  # index mode: a colour mask is a problem, not its red channel
    assert result.exit_code == 1 and "is a colour (RGB) image; set data.mask_format: rgb" in result.output
