"""The torch-free output helpers that both predict backends share."""

import numpy as np
from PIL import Image

from segtool.engine.outputs import colour_lut, write_outputs


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
