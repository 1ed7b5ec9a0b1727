"""The "auto" settings: each rule against hand-computed values, and a real run that records them."""

import math

import numpy as np
import pytest
import yaml

from conftest import save_png
from segtool.config import load_config, parse_split
from segtool.data.pairs import find_pairs
from segtool.models import build_model
from segtool.models.checkpoint import load_checkpoint
from segtool.training.auto import (
    AUTO_STEPS,
    auto_class_weights,
    auto_crop,
    class_pixels,
    coarse_ceiling,
    crop_of,
    orientation_score,
    resolve_auto,
)
from segtool.training.loop import train

CLASSES = "[{name: a, color: [0, 0, 0]}, {name: b, color: [255, 0, 0]}, {name: c, color: [0, 0, 255]}]"


def test_crop_is_the_recipes_for_camvid_sized_images():
    assert auto_crop([(360, 480)] * 3) == (192, 256)


def test_crop_follows_the_median_shape_and_never_exceeds_the_image():
    assert auto_crop([(512, 512)]) == (224, 224)
    assert auto_crop([(100, 100), (1000, 2000), (1000, 2000)]) == (160, 320)
    assert auto_crop([(96, 128), (96, 128)]) == (96, 128)  # small images: the whole image


def test_class_weights_are_inverse_sqrt_shares_with_mean_one():
    w = auto_class_weights(np.array([900, 100, 0]))  # the absent class counts as 0.2% of pixels
    raw = [1 / math.sqrt(0.9), 1 / math.sqrt(0.1), 1 / math.sqrt(0.002)]
    assert w == pytest.approx([r / (sum(raw) / 3) for r in raw], abs=1e-3)
    assert sum(w) / 3 == pytest.approx(1, abs=1e-3)


def _split(root, name, n, hw, fill):
    for i in range(n):
        save_png(root / name / "images" / f"{i}.png", np.zeros((*hw, 3), np.uint8))
        save_png(root / name / "masks" / f"{i}.png", fill(i, hw))


def _dataset(root, fill, train, val):
    _split(root, "train", train, (64, 96), fill)
    _split(root, "val", val, (64, 96), fill)
    return root


def _config(tmp_path, *overrides):
    cfg = load_config(
        None, [f"data.train={tmp_path}/train", f"data.val={tmp_path}/val", f"data.classes={CLASSES}", *overrides]
    )
    return resolve_auto(cfg, find_pairs(cfg.data.train), find_pairs(cfg.data.val))


@pytest.fixture
def quarter_b(tmp_path):
    """16 train masks of 64x96, a quarter class b, the rest a (class c absent); 4 val."""

    def fill(i, hw):
        m = np.zeros(hw, np.uint8)
        m[: hw[0] // 4] = 1
        return m

    return _dataset(tmp_path, fill, 16, 4)


def test_resolve_auto_from_the_data(quarter_b):
    cfg, notes = _config(quarter_b)
    assert crop_of(cfg.augment.train) == (64, 96)  # smaller than the auto area: the whole image
    assert cfg.train.loss.class_weights == auto_class_weights(np.array([0.75, 0.25, 0.0]))
    assert cfg.train.epochs == math.ceil(AUTO_STEPS / (16 // 8))
    # val pixels / (3 x train crop pixels) = 4 / 48 -> 2 epochs keep validation near 7%
    assert cfg.train.val_every == 2
    assert cfg.data.cache is True and cfg.train.workers == 0
    assert any("class_weights" in n for n in notes) and any("crops of 64x96" in n for n in notes)
    # a band a quarter of the image high: a 1/8-resolution output loses nothing -> the fast head
    # (its edge, row 16, lies on the blocks' edges, so the ceiling is exactly 100)
    assert cfg.model.head == "lraspp" and any("model.head: auto -> lraspp" in n and "100.0 mIoU" in n for n in notes)
    # class b fills the top quarter: the masks have an up (orientation 0.75 x 1/3 for a + 0.25 x 1 for b)
    assert not any("RandomRotate90" in step for step in cfg.augment.train)
    assert any("flip (the masks have an up: orientation 0.50)" in n for n in notes)


@pytest.fixture
def thin_lines(tmp_path):
    """Masks of 1-pixel vertical lines (class b) every 6 pixels on class a."""

    def fill(i, hw):
        m = np.zeros(hw, np.uint8)
        m[:, (i % 6) :: 6] = 1
        return m

    return _dataset(tmp_path, fill, 8, 2)


def test_thin_structures_get_the_fine_head(thin_lines):
    cfg, notes = _config(thin_lines)
    assert cfg.model.head == "unet"
    assert any(n.startswith("model.head: auto -> unet (a 1/8-resolution output could reach at most ") for n in notes)
    cfg, notes = _config(thin_lines, "model.head=lraspp")  # an explicit head is kept
    assert cfg.model.head == "lraspp" and not any("model.head" in n for n in notes)


def test_masks_without_an_up_get_quarter_turns_before_the_crop(thin_lines):
    cfg, notes = _config(thin_lines)
    names = [next(iter(step)) for step in cfg.augment.train]
    assert names.index("RandomRotate90") < names.index("RandomCrop")  # the crop keeps its shape
    assert any("quarter turns and flip (no up or down in the masks: orientation 0.00)" in n for n in notes)


def test_orientation_score_compares_each_class_with_its_mirror_image(thin_lines):
    cfg = load_config(None, [f"data.classes={CLASSES}"])
    pixels, bands = class_pixels(find_pairs(parse_split(str(thin_lines / "train"))), cfg)
    assert bands.shape == (3, 8) and (bands.sum(1) == pixels).all() and pixels.sum() == 8 * 64 * 96
    assert orientation_score(bands) == 0.0  # vertical lines look the same upside down
    sky_road = np.array([[4, 4, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0]])
    assert orientation_score(sky_road) == 1.0
    half = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 8]])  # a: symmetric, b: all at the bottom
    assert orientation_score(half) == pytest.approx(0.5)


def test_coarse_ceiling_is_the_mean_iou_of_block_majorities(thin_lines):
    cfg = load_config(None, [f"data.classes={CLASSES}"])
    lines = find_pairs(parse_split(str(thin_lines / "train")))
    # every 8x8 block is mostly class a: a gets every pixel (IoU = its share, 5/6 on average), b none
    share_a = np.mean([1 - len(range(i % 6, 96, 6)) / 96 for i in range(8)])
    assert coarse_ceiling(lines, cfg) == pytest.approx(share_a / 2, abs=1e-6)
    assert coarse_ceiling(lines, cfg, stride=1) == 1.0

    def sparser(i, hw):  # lines every 3, 4, ... 8 pixels: a different ceiling per mask
        m = np.zeros(hw, np.uint8)
        m[:, :: 3 + i] = 1
        return m

    _split(thin_lines, "varied", 6, (64, 96), sparser)
    varied = find_pairs(parse_split(str(thin_lines / "varied")))
    # a sample of the masks is the same sample, with the same value, whatever the list's order
    assert (
        coarse_ceiling(varied, cfg, most=3) == coarse_ceiling(varied[::-1], cfg, most=3) != coarse_ceiling(varied, cfg)
    )
    # data.eval_size: judged at the resolution evaluation works at (here 2x: lines 2 px wide, still under 8)
    assert coarse_ceiling(lines, load_config(None, [f"data.classes={CLASSES}", "data.eval_size=[128, 192]"])) < 0.5


def test_an_unresolved_head_is_refused_by_the_model_builder():
    with pytest.raises(ValueError, match=r"head\n  Input should be 'lraspp', 'deeplabv3plus' or 'unet'"):
        build_model(load_config(None, []).model, 3)


def test_a_resolved_config_holds_no_auto_and_every_decision_is_said(tiny_config):
    """After resolution no field can hold "auto" (the type refuses it), and each auto
    value, the device included, printed a note."""
    from segtool.config import ResolvedConfig, resolved

    cfg = load_config(tiny_config, [f"{k}=auto" for k in AUTO_KEYS])
    with pytest.raises(ValueError):
        resolved(cfg)
    concrete, notes = resolve_auto(cfg, find_pairs(cfg.data.train), find_pairs(cfg.data.val), "cpu")
    assert isinstance(concrete, ResolvedConfig) and "'auto'" not in str(concrete.to_dict())
    assert sorted(n.split(":")[0] for n in notes) == sorted(AUTO_KEYS)
    assert "train.device: auto -> cpu (no CUDA GPU on this machine)" in notes


AUTO_KEYS = [
    "augment.train",
    "data.cache",
    "model.head",
    "train.loss.class_weights",
    "train.epochs",
    "train.val_every",
    "train.workers",
    "train.device",
]


def test_a_run_on_thin_structures_trains_and_records_the_unet_head(thin_lines, tmp_path):
    cfg = load_config(
        None,
        [
            f"data.train={thin_lines}/train",
            f"data.val={thin_lines}/val",
            f"data.classes={CLASSES}",
            "train.epochs=1",
            "model.width_mult=0.35",
            "model.head_channels=16",
            "train.plots=false",
        ],
    )
    train(cfg, tmp_path / "r", progress=False)
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["model"]["head"] == "unet"
    assert load_checkpoint(tmp_path / "r" / "last.pt")["config"]["model"]["head"] == "unet"


def test_explicit_values_are_kept(quarter_b):
    cfg, notes = _config(
        quarter_b,
        "train.epochs=7",
        "train.val_every=3",
        "train.workers=1",
        "data.cache=false",
        "train.loss.class_weights=null",
        "augment.train=[HorizontalFlip]",
        "model.head=deeplabv3plus",
        "train.device=cpu",
    )
    t = cfg.train
    assert (t.epochs, t.val_every, t.workers, t.loss.class_weights, cfg.data.cache) == (7, 3, 1, None, False)
    assert cfg.augment.train == [{"HorizontalFlip": {}}] and cfg.model.head == "deeplabv3plus" and notes == []


def test_a_time_limit_sets_the_length_and_a_short_run_validates_often(quarter_b):
    cfg, _ = _config(quarter_b, "train.time_limit=10m")
    assert cfg.train.epochs >= 10_000
    cfg, _ = _config(quarter_b, "train.epochs=10", "train.val_every=auto")
    assert cfg.train.val_every == 1  # at least 10 validations in a 10-epoch run


def test_the_run_folder_records_the_resolved_values(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["train.epochs=1", "augment.train=auto", "train.loss.class_weights=auto"])
    train(cfg, tmp_path / "r", progress=False)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert isinstance(saved["augment"]["train"], list) and crop_of(saved["augment"]["train"]) == (48, 64)
    assert len(saved["train"]["loss"]["class_weights"]) == 4 and isinstance(saved["train"]["val_every"], int)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["config"]["train"]["loss"] == saved["train"]["loss"]
    # the saved config resumes the run as it was
    again = load_config(tmp_path / "r" / "config.yaml", ["train.epochs=2"])
    train(again, tmp_path / "r", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["state"]["epoch"] == 2


def test_an_explicit_epoch_count_that_caps_a_time_limit_says_so(tiny_config, tmp_path, capsys):
    cfg = load_config(tiny_config, ["train.epochs=3", "train.time_limit=60s"])
    result = train(cfg, tmp_path / "t", progress=False)
    out = capsys.readouterr()
    assert result.epochs == 3
    assert "train.epochs=3 caps it" in out.out + out.err


@pytest.mark.parametrize("cache", [True, False])
def test_a_run_start_reads_each_header_once_and_decodes_each_mask_once(tiny_config, tmp_path, monkeypatch, cache):
    """One data scan per run: the header check, the auto values (crop, cache, validation
    interval from the sizes; class weights, orientation, ignore check and head from the
    masks) and, with the cache, the decoded data share one read of every header and one
    decode of every mask; one epoch's validation then reads nothing again."""
    from collections import Counter

    import segtool.data.doctor as doctor
    import segtool.data.pairs as pairs_mod
    import segtool.data.scan as scan_mod

    headers, masks = Counter(), Counter()
    real_header, real_mask = doctor.header, scan_mod.read_mask

    def count_header(path):
        headers[str(path)] += 1
        return real_header(path)

    def count_mask(path, data):
        masks[str(path)] += 1
        return real_mask(path, data)

    monkeypatch.setattr(doctor, "header", count_header)
    monkeypatch.setattr(scan_mod, "read_mask", count_mask)
    monkeypatch.setattr(pairs_mod, "read_mask", count_mask)
    overrides = [f"{k}=auto" for k in AUTO_KEYS if k != "data.cache"] + [f"data.cache={str(cache).lower()}"]
    cfg = load_config(tiny_config, [*overrides, "train.epochs=1"])
    train(cfg, tmp_path / "r", progress=False)
    files = len(find_pairs(cfg.data.train)) + len(find_pairs(cfg.data.val))
    assert len(headers) == 2 * files and set(headers.values()) == {1}
    # With the cache every mask is decoded once in all. Without it, once by the scan, and
    # val masks once more by the validation (training's own reads happen in the loader's
    # worker processes, train.workers: auto -> 2, which this count does not see).
    train_masks = {str(m) for _, m in find_pairs(cfg.data.train)}
    assert len(masks) == files
    assert {p: n for p, n in masks.items() if n != (1 if cache or p in train_masks else 2)} == {}
