"""The torch-free output helpers that both predict backends share."""

import numpy as np
from PIL import Image

from segtool.engine.outputs import argmax_classes, colour_lut, write_outputs


def test_argmax_classes_equals_numpy_argmax_ties_included():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((11, 40, 56)).astype(np.float32)
    logits[3, :5] = logits[7, :5] = 9.0  # a tie: the first class wins, as with argmax
    padded = np.zeros((11, 48, 64), np.float32)
    padded[:, :40, :56] = logits
    view = padded[:, :40, :56]  # what a padded batch hands over: a strided view
    before = view.copy()
    classes = argmax_classes(view)
    assert classes.dtype == np.uint8 and classes.shape == (40, 56)
    assert np.array_equal(classes, logits.argmax(0))
    assert np.array_equal(view, before)  # the logits are left alone


def test_mask_is_a_palette_png_and_overlay_a_jpeg(tmp_path):
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    pred = np.zeros((30, 40), np.uint8)
    pred[:, 20:] = 2
    image = np.full((30, 40, 3), 200, np.uint8)
    write_outputs(pred, image, colour_lut(colours), tmp_path / "a_mask.png", tmp_path / "a_overlay.jpg")
    mask = Image.open(tmp_path / "a_mask.png")
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), pred)
    assert mask.getpalette()[6:9] == [0, 0, 255]
    overlay = np.asarray(Image.open(tmp_path / "a_overlay.jpg"))
    assert overlay.shape == (30, 40, 3)
    assert abs(int(overlay[15, 30, 2]) - 227) <= 3 and abs(int(overlay[15, 5, 2]) - 100) <= 3  # 50% blends


def test_model_batch_matches_the_eval_transform(tiny_cfg):
    from segtool.data.transforms import build_eval_transform
    from segtool.engine.outputs import model_batch

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)]
    for cfg in (tiny_cfg, tiny_cfg.model_copy(update={"data": tiny_cfg.data.model_copy(update={"eval_size": (32, 40)})})):
        batch, sizes = model_batch(images, cfg.data.mean, cfg.data.std, cfg.data.eval_size)
        transform = build_eval_transform(cfg)
        for i, img in enumerate(images):
            ref = transform(image=img)["image"].numpy()
            h, w = sizes[i]
            assert ref.shape == (3, h, w)
            assert np.abs(batch[i, :, :h, :w] - ref).max() < 1e-5
            assert not batch[i, :, h:, :].any() and not batch[i, :, :, w:].any()  # zero padding
