"""The torch-free output helpers that both predict backends share."""

import numpy as np
from PIL import Image

from conftest import red_predictor
from segtool.inference.outputs import colour_lut, write_outputs


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


def _fake_predictor():
    """Class 1 wherever the red channel is bright: a model stand-in that needs no torch."""
    return red_predictor()


def _image(path, red):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), (red, 0, 0), np.uint8)).save(path)
    return path


def test_inputs_that_share_a_stem_get_outputs_of_their_own(tmp_path):
    from segtool.inference.outputs import predict_files

    _image(tmp_path / "same" / "img.png", 255)
    _image(tmp_path / "same" / "img.bmp", 0)
    _image(tmp_path / "a" / "x" / "img.png", 255)
    result = predict_files(
        [tmp_path / "same", tmp_path / "a" / "x" / "img.png"], tmp_path / "out", _fake_predictor(), progress=False
    )
    names = sorted(p.name for p in (tmp_path / "out").glob("*_mask.png"))
    assert len(result.written) == 3 and len(names) == 3, names
    assert "img_bmp_mask.png" in names and "same_img_png_mask.png" in names and "x_img_png_mask.png" in names
    assert np.asarray(Image.open(tmp_path / "out" / "img_bmp_mask.png")).max() == 0  # the dark image's own mask


def test_a_mask_made_from_another_input_is_not_already_there(tmp_path):
    from segtool.inference.outputs import predict_files

    out = tmp_path / "out"
    first = _image(tmp_path / "one" / "img.webp", 255)
    second = _image(tmp_path / "two" / "img.png", 0)
    assert len(predict_files([first], out, _fake_predictor(), progress=False).written) == 1
    again = predict_files([first], out, _fake_predictor(), progress=False)
    assert again.skipped == [first] and not again.failed
    clash = predict_files([second], out, _fake_predictor(), progress=False)
    assert not clash.skipped and not clash.written
    assert (
        clash.failed[0][0] == str(second)
        and "was made from" in clash.failed[0][1]
        and "--overwrite" in clash.failed[0][1]
    )
    assert np.asarray(Image.open(out / "img_mask.png")).max() == 1  # the first image's mask is kept
    assert predict_files([second], out, _fake_predictor(), progress=False, overwrite=True).written


def test_a_run_never_reads_its_own_outputs(tmp_path):
    from segtool.inference.outputs import predict_files

    _image(tmp_path / "photos" / "a.png", 255)
    for _ in range(2):  # the second run finds a_mask.png and a_overlay.jpg beside a.png
        result = predict_files(
            [tmp_path / "photos"], tmp_path / "photos", _fake_predictor(), progress=False, overwrite=True
        )
        assert len(result.written) == 1
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.png", "a_mask.png", "a_overlay.jpg"]


def test_double_star_does_not_follow_symlink_loops(tmp_path):
    from segtool.inference.outputs import collect_inputs

    _image(tmp_path / "d" / "x.png", 0)
    _image(tmp_path / "d" / "sub" / "y.png", 0)
    (tmp_path / "d" / "sub" / "loop").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "loop2").symlink_to(tmp_path / "d" / "sub")
    found, missing = collect_inputs([f"{tmp_path}/d/**/*.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["d/x.png", "d/sub/y.png"] and not missing
    found, _ = collect_inputs([f"{tmp_path}/d/*/*.png"])  # one level, through the link too: no loop to fear
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["d/loop2/y.png", "d/sub/y.png"]


def test_the_overlay_legend_lists_only_the_classes_present(tmp_path):
    from segtool.inference.outputs import draw_legend

    lut = colour_lut(np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8))
    pred = np.zeros((300, 400), np.uint8)
    pred[:, 200:] = 2  # classes 0 and 2 present, 1 and 3 not
    picture = np.full((300, 400, 3), 128, np.uint8)
    draw_legend(picture, pred, lut, ["bg", "red", "green", "blue"])
    corner = picture[:80, :150].reshape(-1, 3)
    has = lambda c: bool((np.abs(corner.astype(int) - c).sum(1) == 0).any())  # noqa: E731
    assert has((0, 255, 0)) and has((0, 0, 0))  # the swatches of the classes present
    assert not has((255, 0, 0)) and not has((0, 0, 255))
    assert (picture[150:, 300:] == 128).all()  # the rest of the picture is untouched


def test_predict_draws_a_legend_unless_told_not_to(tmp_path):
    from segtool.inference.outputs import predict_files

    named = red_predictor(["dark", "bright"])
    photo = tmp_path / "in" / "a.png"
    photo.parent.mkdir()
    Image.fromarray(np.full((120, 160, 3), (200, 90, 90), np.uint8)).save(photo)
    predict_files([photo], tmp_path / "with", named, progress=False)
    predict_files([photo], tmp_path / "without", named, progress=False, legend=False)
    a, b = (np.asarray(Image.open(tmp_path / d / "a_overlay.jpg")).astype(int) for d in ("with", "without"))
    assert np.abs(a[:30, :60] - b[:30, :60]).mean() > 20 and np.abs(a[80:, 100:] - b[80:, 100:]).max() <= 8
