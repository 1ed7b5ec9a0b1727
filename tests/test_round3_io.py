"""Nothing silently wrong, round three: bit depths, mask values, grey+alpha masks, the
pixel limit for every decoder, file names that are not UTF-8, and list-file encodings.
Real files on disk, read by the real readers and the real CLI."""

import codecs
import os
import shutil
import time

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

import segtool
from conftest import TINY_YAML, run, save_png
from segtool.config import DataConfig, SplitSpec, load_config
from segtool.data.doctor import quick_check
from segtool.data.io import read_image, read_mask
from segtool.data.pairs import find_pairs
from segtool.errors import ConfigError, DataError

STREET = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "u_street.jpg")
CLASSES = [{"name": n, "color": [i, i, i]} for i, n in enumerate(["a", "b", "c", "d"])]


def data_cfg(**kw) -> DataConfig:
    return DataConfig.model_validate({"classes": CLASSES, **kw})


def dataset(tmp_path, tiny_data, name="d"):
    """A copy of the tiny dataset to damage, and a config for it."""
    root = tmp_path / name
    shutil.copytree(tiny_data, root)
    config = tmp_path / f"{name}.yaml"
    config.write_text(TINY_YAML.format(root=root))
    return root, config


def no_traceback(result):
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# ------------------------------------------------------------------ 1. bit depth, not min-max


def test_a_16bit_image_reads_and_predicts_as_its_8bit_twin(tmp_path):
    # A photo that spans 30..183, not 0..255: stretched to its own min and max, the
    # 16-bit copy looked brighter and more contrasted to the model than the 8-bit one.
    rgb = (np.asarray(Image.open(STREET).convert("RGB")) * 0.6 + 30).astype(np.uint8)
    eight, sixteen = tmp_path / "photo8.png", tmp_path / "photo16.png"
    cv2.imwrite(str(eight), rgb[..., ::-1])
    cv2.imwrite(str(sixteen), rgb[..., ::-1].astype(np.uint16) * 257)
    assert cv2.imread(str(sixteen), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    model = segtool.load()  # the built-in CamVid model, on ONNX Runtime
    assert np.array_equal(model.predict(sixteen).mask, model.predict(eight).mask)  # 21% of pixels differed
    assert np.array_equal(read_image(sixteen), read_image(eight))
    assert np.array_equal(read_image(eight), rgb)


def test_16bit_grey_is_scaled_by_its_bit_depth(tmp_path):
    deep = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 1000, 25700, 40000, 65535]], np.uint16)).save(deep)
    assert read_image(deep)[0, :, 0].tolist() == [0, 4, 100, 156, 255]  # round(x / 257)


def test_float_images_are_read_from_0_1_and_refused_outside_it(tmp_path):
    values = np.array([[[0.0, 0.5, 1.0], [0.2, 0.4, 0.6]]], np.float32)
    cv2.imwrite(str(tmp_path / "unit.tif"), values[..., ::-1])
    assert read_image(tmp_path / "unit.tif").tolist() == [[[0, 128, 255], [51, 102, 153]]]
    cv2.imwrite(str(tmp_path / "wide.tif"), values * 300)
    with pytest.raises(DataError, match=r"image .*wide.tif is a float image with values from 0 to 300; .*\[0, 1\]"):
        read_image(tmp_path / "wide.tif")
    cv2.imwrite(str(tmp_path / "signed.tif"), np.array([[-3, 7]], np.int32))
    with pytest.raises(DataError, match=r"image .*signed.tif holds int32 pixels; .*8- or 16-bit PNG or TIFF"):
        read_image(tmp_path / "signed.tif")


# ------------------------------------------------------------------ 2. mask values


def _tiff_mask(path, array, mode):
    Image.fromarray(array, mode).save(path)
    return path


@pytest.mark.parametrize(
    "mode, value, needle",
    [
        ("I", -1, r"negative values \(-1\)"),
        ("I", -2, r"negative values \(-2\)"),
        ("F", 1.9, r"values that are not whole numbers \(1.9\)"),
    ],
    ids=["int32 -1 (wrapped to ignore)", "int32 -2 (wrapped to 254)", "float 1.9 (truncated to 1)"],
)
def test_negative_and_fractional_mask_values_are_refused_everywhere(tmp_path, tiny_data, mode, value, needle):
    root, config = dataset(tmp_path, tiny_data)
    good = root / "val" / "masks" / "0001.png"
    arr = np.asarray(Image.open(good)).astype(np.int32 if mode == "I" else np.float32)
    arr[0, :5] = value
    good.unlink()
    bad = _tiff_mask(root / "val" / "masks" / "0001.tif", arr, mode)
    with pytest.raises(DataError, match=rf"mask .*0001.tif \(mode {mode}\) holds {needle}"):
        read_mask(bad, data_cfg())
    with pytest.raises(DataError, match=needle):  # also with no class list (check-data on a folder)
        read_mask(bad, data_cfg(classes=[]), raw=True)
    result = run("check-data", config)
    no_traceback(result)
    assert result.exit_code == 1 and "no problems found" not in result.output
    assert "problem: mask" in result.output and "0001.tif (mode" in result.output, result.output
    # evaluate (the built-in model: no training needed) leaves the pair out by name
    result = run("evaluate", "--data", root / "val", "-q")
    no_traceback(result)
    assert result.exit_code != 0 and "0001.tif (mode" in result.output, result.output


def test_whole_valued_float_and_int32_masks_still_read(tmp_path):
    arr = np.array([[0, 1], [2, 255]])
    f = _tiff_mask(tmp_path / "f.tif", arr.astype(np.float32), "F")
    i = _tiff_mask(tmp_path / "i.tif", arr.astype(np.int32), "I")
    for p in (f, i):
        assert read_mask(p, data_cfg()).tolist() == arr.tolist()


def test_a_grey_level_above_255_is_no_colour(tmp_path):
    p = _tiff_mask(tmp_path / "i.tif", np.array([[0, 300]], np.int32), "I")
    with pytest.raises(DataError, match=r"mask .*i.tif \(mode I\) has values up to 300, which are no grey colour"):
        read_mask(p, data_cfg(mask_format="rgb"))


# ------------------------------------------------------------------ 3. grey+alpha masks


@pytest.mark.parametrize("alpha", ["same as grey", "opaque"])
def test_grey_alpha_masks_read_as_their_grey_channel(tmp_path, tiny_data, alpha):
    root, config = dataset(tmp_path, tiny_data)
    path = root / "val" / "masks" / "0001.png"
    grey = np.asarray(Image.open(path))
    a = grey if alpha == "same as grey" else np.full_like(grey, 255)
    Image.fromarray(np.stack([grey, a], -1), "LA").save(path)
    assert Image.open(path).mode == "LA"
    assert np.array_equal(read_mask(path, data_cfg()), grey)
    assert np.array_equal(read_mask(path, data_cfg(classes=[]), raw=True), grey)
    assert np.array_equal(read_mask(path, data_cfg(mask_format="rgb"), raw=True), np.stack([grey] * 3, -1))
    result = run("check-data", config)
    no_traceback(result)
    assert result.exit_code == 0 and "no problems found" in result.output, result.output
    result = run("evaluate", "--data", root / "val", "-q")
    no_traceback(result)
    assert result.exit_code == 0, result.output


def test_init_reads_grey_alpha_masks_as_their_grey(tmp_path, tiny_data):
    root, _ = dataset(tmp_path, tiny_data)
    for p in (root / "train" / "masks").iterdir():
        grey = np.asarray(Image.open(p))
        Image.fromarray(np.stack([grey, grey], -1), "LA").save(p)
    result = run("init", root, "--out", tmp_path / "init.yaml")
    assert result.exit_code == 0, result.output
    classes = yaml.safe_load((tmp_path / "init.yaml").read_text())["data"]["classes"]
    assert len(classes) == 4


# ------------------------------------------------------------------ 4. the pixel limit, for every decoder

HDR_HEADER = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 12000 +X 12000\n"


def test_an_image_pillow_cannot_read_is_size_checked_before_opencv_decodes_it(tmp_path):
    # A Radiance HDR file named .png: Pillow cannot read it, OpenCV can, and allocated the
    # 12000x12000 float image its header declares before reading any pixel.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(HDR_HEADER + bytes(64))
    start = time.monotonic()
    with pytest.raises(DataError, match=r"image .*bomb.png declares 12000x12000 = 144.0 megapixels, above the limit"):
        read_image(bomb)
    assert time.monotonic() - start < 2


def test_a_small_hdr_is_refused_above_the_limit_and_read_below_it(tmp_path, monkeypatch):
    small = tmp_path / "small.hdr"
    cv2.imwrite(str(small), np.full((40, 50, 3), 0.5, np.float32))
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match=r"image .*small.hdr declares 50x40 = 0.0 megapixels"):
        read_image(small)
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", "2000")
    assert read_image(small).shape == (40, 50, 3)


def test_a_float_tiff_pillow_cannot_open_is_size_checked_and_trains(tmp_path, monkeypatch):
    image = tmp_path / "f.tif"
    cv2.imwrite(str(image), np.full((40, 50, 3), 0.25, np.float32))
    with pytest.raises(Exception):  # noqa: B017  (whichever error this Pillow raises)
        Image.open(image)  # what made the size check pass it to OpenCV unchecked
    mask = save_png(tmp_path / "m.png", np.zeros((40, 50), np.uint8))
    quick_check([(image, mask)])  # train's header check reads its size too
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match=r"image .*f.tif declares 50x40"):
        read_image(image)


def test_an_image_whose_header_cannot_be_read_is_refused(tmp_path):
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y lots +X lots\n" + bytes(64))
    with pytest.raises(
        DataError, match=r"cannot read the header of image .*damaged.png to check its size .*convert it to PNG"
    ):
        read_image(damaged)


@pytest.mark.parametrize("setting", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_pixel_limit_is_an_error_not_no_limit(tmp_path, tiny_data, monkeypatch, setting):
    path = save_png(tmp_path / "x.png", np.zeros((4, 5, 3), np.uint8))
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", setting)
    with pytest.raises(ConfigError, match=rf"SEGTOOL_MAX_PIXELS is '{setting}'; set it to a positive number of pixels"):
        read_image(path)
    with pytest.raises(ConfigError, match="SEGTOOL_MAX_PIXELS"):
        read_mask(path, data_cfg(classes=[]), raw=True)
    result = run("check-data", tiny_data / "val")
    no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "SEGTOOL_MAX_PIXELS" in errors[0], result.output


def test_init_checks_the_size_of_the_masks_it_reads(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", "1000")
    result = run("init", tiny_data, "--out", tmp_path / "x.yaml")
    no_traceback(result)
    assert result.exit_code == 2 and "declares 64x48" in result.output and "SEGTOOL_MAX_PIXELS" in result.output
    assert not (tmp_path / "x.yaml").exists()


# ------------------------------------------------------------------ 5. file names that are not UTF-8


@pytest.mark.parametrize("group", [os.fsdecode(b"b\xff_"), "b[1]_"], ids=["byte 0xff", "brackets"])
def test_init_holds_out_files_whose_names_are_not_utf8_or_hold_wildcards(tmp_path, tiny_data, group):
    root = tmp_path / os.fsdecode(b"data\xff")  # the folder's name is not UTF-8 either
    src = tiny_data / "train"
    files = sorted(p.name for p in (src / "images").iterdir())[:3]
    for g in ("a_", group, "c_"):  # three name groups: init holds out the middle one
        for i, f in enumerate(files):
            for sub in ("images", "masks"):
                (root / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(src / sub / f, root / sub / f"{g}{i}.png")
    out = tmp_path / "init.yaml"
    result = run("init", root, "--out", out)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    assert cfg.data.root == root
    val = sorted(img.name for img, _ in find_pairs(cfg.data.val, "val"))
    train = sorted(img.name for img, _ in find_pairs(cfg.data.train, "train"))
    assert val == [f"{group}{i}.png" for i in range(3)]
    assert not set(val) & set(train) and len(train) == 6
    # and the readers take such names as they are
    img, mask = find_pairs(cfg.data.val, "val")[0]
    assert read_image(img).shape == (48, 64, 3) and read_mask(mask, data_cfg()).shape == (48, 64)


# ------------------------------------------------------------------ 6. list-file encodings


def test_a_list_file_with_a_byte_order_mark_reads_its_first_line(tmp_path, tiny_data):
    lst = tmp_path / "bom.txt"
    lines = [f"{tiny_data}/val/images/{n}.png {tiny_data}/val/masks/{n}.png" for n in ("0000", "0001")]
    lst.write_bytes(codecs.BOM_UTF8 + "\n".join(lines).encode())
    result = run("check-data", lst)
    assert result.exit_code == 0 and "2 pairs" in result.output and "no problems found" in result.output, result.output
    assert "\ufeff" not in result.output


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"a.png m.png\n# caf\xe9\n", r"is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"),
        (codecs.BOM_UTF16_LE + "a.png m.png\n".encode("utf-16-le"), "is UTF-16 text; save it as UTF-8"),
    ],
    ids=["latin-1", "utf-16"],
)
def test_a_list_file_that_is_not_utf8_is_named(tmp_path, content, needle):
    lst = tmp_path / "list.txt"
    lst.write_bytes(content)
    result = run("check-data", lst)
    no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert f"list file {lst} " in errors[0]
    with pytest.raises(DataError, match=needle):
        find_pairs(SplitSpec.model_validate(str(lst)))


def test_check_data_names_a_file_that_is_not_utf8_in_printable_form(tmp_path, tiny_data):
    root, _ = dataset(tmp_path, tiny_data)
    stray = root / "val" / "masks" / os.fsdecode(b"stray\xff.png")
    stray.write_bytes(b"junk")
    result = run("check-data", root / "val")
    no_traceback(result)
    assert result.exit_code == 1 and "stray\\xff.png has no image" in result.output, result.output
