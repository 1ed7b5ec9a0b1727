"""`segtool init` on datasets as they come, end to end: init, check-data, train, evaluate,
predict. The files reproduce the quirks of two real public sets: aerial tiles whose
palette PNG masks order their palettes differently from file to file, and microscopy
slices with 0/255 binary masks and no val split."""

import numpy as np
import yaml
from PIL import Image

from conftest import run
from segtool.data.survey import group_of

AERIAL = [(60, 16, 152), (132, 41, 246), (110, 193, 228), (254, 221, 58)]  # building, land, road, vegetation


def _aerial(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            labels = np.zeros((48, 64), np.uint8)
            labels[:, 16:32], labels[:, 32:48], labels[:, 48:] = 1, 2, 3
            image = np.array(AERIAL, np.uint8)[labels] // 2 + rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"tile{i}.jpg")
            order = rng.permutation(4)  # this file's palette order
            index_of = {c: k for k, c in enumerate(order)}
            mask = Image.fromarray(np.vectorize(index_of.get)(labels).astype(np.uint8), "L").convert("P")
            mask.putpalette([v for c in order for v in AERIAL[c]])
            mask.save(root / split / "masks" / f"tile{i}.png")


def _microscopy(root):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for stack in ("a", "b", "c", "d"):
        for k in range(3):
            mask = np.zeros((40, 40), np.uint8)
            mask[10 + k : 30, 5:35] = 255
            image = np.where(mask > 0, 170, 60).astype(np.uint8) + rng.integers(0, 40, (40, 40), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / f"stack{stack}_{k:02d}.tif")
            Image.fromarray(mask).save(root / "masks" / f"stack{stack}_{k:02d}.png")


def _end_to_end(tmp_path, data, name):
    cfg = tmp_path / f"{name}.yaml"
    result = run("init", data, "--out", cfg)
    assert result.exit_code == 0, result.output
    assert run("init", data, "--out", cfg).exit_code == 2  # never overwritten without --force
    result = run("check-data", cfg)
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    result = run("train", cfg, "--out", out, "-q", "--set", "train.epochs=2")
    assert result.exit_code == 0 and "trained 2 epochs" in result.output, result.output
    result = run("evaluate", out / "best.pt", "-q")
    assert result.exit_code == 0, result.output
    images = data / "images" if (data / "images").is_dir() else data / "val" / "images"
    result = run("predict", images, "-c", out / "best.pt", "--out", tmp_path / "p", "-q")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(cfg.read_text()), cfg.read_text()


def test_init_reads_per_file_palettes_as_colours(tmp_path):
    _aerial(tmp_path / "aerial")
    cfg, text = _end_to_end(tmp_path, tmp_path / "aerial", "aerial")
    assert cfg["data"]["mask_format"] == "rgb" and cfg["data"]["val"] == "val"
    assert sorted(tuple(c["color"]) for c in cfg["data"]["classes"]) == sorted(AERIAL)
    assert "palettes differ between files" in text


def test_init_maps_0_255_masks_and_holds_out_whole_stacks(tmp_path):
    _microscopy(tmp_path / "em")
    cfg, _ = _end_to_end(tmp_path, tmp_path / "em", "em")
    data = cfg["data"]
    assert [c["value"] for c in data["classes"]] == [0, 255] and data["ignore_index"] != 255
    held = data["val"]["include"]
    assert held == data["train"]["exclude"] and all(p.startswith("stack") and p.endswith("_*") for p in held)


def test_group_of_keeps_a_sequence_together():
    assert group_of("0001TP_006690.png") == "0001TP_"
    assert group_of("patient12_slice3.png") == "patient12_slice"
    assert group_of("plain.png") == "plain"


def test_init_on_a_folder_without_masks_is_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    result = run("init", tmp_path / "photos", "--out", tmp_path / "x.yaml")
    assert result.exit_code == 2 and "holds neither images/ + masks/" in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_init_refuses_masks_with_more_values_than_classes_can_be(tmp_path):
    root = tmp_path / "jpeg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ramp = (np.arange(64 * 64).reshape(64, 64) * 7 % 256).astype(np.uint8)  # 256 values: a smooth picture, not labels
    Image.fromarray(np.stack([ramp] * 3, -1)).save(root / "images" / "a.png")
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp.T], -1)).save(root / "masks" / "a.png")
    result = run("init", root, "--out", tmp_path / "x.yaml")
    assert result.exit_code == 2 and "too many to be classes" in result.output and "save them as PNG" in result.output
    assert not (tmp_path / "x.yaml").exists()
