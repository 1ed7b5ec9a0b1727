import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_png
from segtool.config import DataConfig, SplitSpec, load_config
from segtool.data.datasets import SegDataset
from segtool.data.io import read_image, read_mask
from segtool.data.loader import pad_collate
from segtool.data.pairs import find_pairs
from segtool.data.transforms import build_train_transform
from segtool.errors import ConfigError, DataError
from segtool.inference.processing import input_spec, predict_maps, preprocess

CLASSES = [{"name": "a", "color": [0, 0, 0]}, {"name": "b", "color": [255, 0, 0]}, {"name": "c", "color": [0, 0, 255]}]


def data_cfg(**kw) -> DataConfig:
    return DataConfig.model_validate({"classes": CLASSES, **kw})


# ------------------------------------------------------------------ pairing


def test_folder_pairs_by_stem_with_any_extension(tmp_path):
    save_png(tmp_path / "images" / "b.jpg", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "masks" / "b.png", np.zeros((4, 4), np.uint8))
    pairs = find_pairs(SplitSpec.model_validate(str(tmp_path)))
    assert [(i.name, m.name) for i, m in pairs] == [("a.png", "a.png"), ("b.jpg", "b.png")]


def test_image_without_mask_is_named(tmp_path):
    save_png(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"image .*a.png has no mask"):
        find_pairs(SplitSpec.model_validate(str(tmp_path)))


def test_mask_without_image_is_named(tmp_path):
    save_png(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "masks" / "z.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"mask .*z.png has no image"):
        find_pairs(SplitSpec.model_validate(str(tmp_path)))


def test_list_file_paths_are_relative_to_it(tmp_path):
    save_png(tmp_path / "img" / "x.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "ann" / "x.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "train.txt").write_text("# comment\n\nimg/x.png ann/x.png\n")
    pairs = find_pairs(SplitSpec.model_validate(str(tmp_path / "train.txt")))
    assert pairs == [(tmp_path / "img" / "x.png", tmp_path / "ann" / "x.png")]


def test_list_file_bad_line_has_its_number(tmp_path):
    (tmp_path / "train.txt").write_text("a.png b.png c.png\n")
    with pytest.raises(DataError, match=r"train.txt:1: expected 'image_path mask_path'"):
        find_pairs(SplitSpec.model_validate(str(tmp_path / "train.txt")))


def test_list_file_missing_entry(tmp_path):
    (tmp_path / "train.txt").write_text("\nimg/a.png ann/a.png\n")
    with pytest.raises(DataError, match=r"train.txt:2: image .*a.png not found"):
        find_pairs(SplitSpec.model_validate(str(tmp_path / "train.txt")))


def test_empty_split(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="holds no image/mask pairs"):
        find_pairs(SplitSpec.model_validate(str(tmp_path)), "train")


# ------------------------------------------------------------------ reading


def test_images_of_any_mode_become_rgb(tmp_path):
    grey = save_png(tmp_path / "g.png", np.full((5, 6), 100, np.uint8))
    rgba = save_png(tmp_path / "a.png", np.full((5, 6, 4), 200, np.uint8))
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((5, 6), 60000, np.uint16)).save(deep)
    for p in (grey, rgba, deep):
        img = read_image(p)
        assert img.shape == (5, 6, 3) and img.dtype == np.uint8


def test_rgb_channel_order(tmp_path):
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[..., 0] = 255
    assert read_image(save_png(tmp_path / "r.png", arr))[0, 0].tolist() == [255, 0, 0]


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"image .*bad.png cannot be decoded"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_image(empty)


def test_index_mask_modes(tmp_path):
    arr = np.array([[0, 1], [2, 255]], np.uint8)
    save_png(tmp_path / "l.png", arr)
    pal = Image.fromarray(arr)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [9] * (256 * 3 - 9))
    pal.save(tmp_path / "p.png")
    Image.fromarray(arr.astype(np.uint16)).save(tmp_path / "i16.png")
    save_png(tmp_path / "rgbgrey.png", np.stack([arr] * 3, -1))
    for name in ("l.png", "p.png", "i16.png", "rgbgrey.png"):
        assert read_mask(tmp_path / name, data_cfg()).tolist() == arr.tolist(), name


def test_mask_value_out_of_range_is_named(tmp_path):
    p = save_png(tmp_path / "m.png", np.array([[0, 7]], np.uint8))
    with pytest.raises(DataError, match=r"mask .*m.png has values \[7\] outside the 3 classes"):
        read_mask(p, data_cfg())


def test_colour_mask_in_index_mode_says_what_to_set(tmp_path):
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[0, 0] = [255, 0, 0]
    p = save_png(tmp_path / "m.png", arr)
    with pytest.raises(DataError, match="mask_format: rgb"):
        read_mask(p, data_cfg())


def test_rgb_mask_decoding(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 1] = [255, 0, 0]
    arr[1, 2] = [0, 0, 255]
    p = save_png(tmp_path / "m.png", arr)
    assert read_mask(p, data_cfg(mask_format="rgb")).tolist() == [[0, 1, 0], [0, 0, 2]]


def test_rgb_mask_unknown_colour(tmp_path):
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[1, 1] = [1, 2, 3]
    p = save_png(tmp_path / "m.png", arr)
    with pytest.raises(DataError, match=r"colours not in data.classes: \(1,2,3\)"):
        read_mask(p, data_cfg(mask_format="rgb"))


def test_reduce_zero_label(tmp_path):
    p = save_png(tmp_path / "m.png", np.array([[0, 1, 3, 255]], np.uint8))
    assert read_mask(p, data_cfg(reduce_zero_label=True)).tolist() == [[255, 0, 2, 255]]


def test_size_mismatch_names_both_files(tmp_path):
    img = save_png(tmp_path / "i.png", np.zeros((4, 6, 3), np.uint8))
    mask = save_png(tmp_path / "m.png", np.zeros((4, 5), np.uint8))
    ds = SegDataset([(img, mask)], data_cfg())
    with pytest.raises(DataError, match=r"mask .*m.png is 4x5 but image .*i.png is 4x6"):
        ds.load(0)


# ------------------------------------------------------------------ transforms


def _cfg_with(train_aug, **data):
    return load_config(
        None,
        [f"augment.train={train_aug}", f"data.classes={CLASSES}".replace("'", "")]
        + [f"data.{k}={v}" for k, v in data.items()],
    )


def _marked_pair():
    image = np.zeros((20, 30, 3), np.uint8)
    image[5:10, 2:6] = 255
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 2:6] = 1
    return image, mask


def test_flip_moves_image_and_mask_alike():
    t = build_train_transform(_cfg_with("[{HorizontalFlip: {p: 1.0}}]"))
    image, mask = _marked_pair()
    out = t(image=image, mask=mask)
    img, m = out["image"], out["mask"]
    assert (m[5:10, 24:28] == 1).all() and (m[5:10, 2:6] == 0).all()
    assert torch.equal(img[0] > 0, m == 1)


def test_crop_moves_image_and_mask_alike_and_pads_with_ignore():
    t = build_train_transform(
        _cfg_with(
            "[{RandomScale: {scale_limit: [-0.3, 0.3], interpolation: 0, p: 1}}, "
            "{PadIfNeeded: {min_height: 40, min_width: 40}}, {RandomCrop: {height: 32, width: 32}}]"
        )
    )
    image, mask = _marked_pair()
    for seed in range(5):
        t.set_random_seed(seed)
        out = t(image=image, mask=mask)
        img, m = out["image"], out["mask"]
        assert img.shape == (3, 32, 32) and m.shape == (32, 32)
        # nearest-neighbour image scaling here, so the white square and its label match exactly
        assert torch.equal(img[0] > 0, m == 1)
        assert (m == 255).any()  # padding is the ignore index, never class 0
        assert set(m.unique().tolist()) <= {0, 1, 255}


def test_unknown_transform_suggests_a_name():
    with pytest.raises(
        ConfigError, match=r"augment.train\[0\]: unknown transform 'HorizontalFlp'; did you mean 'HorizontalFlip'"
    ):
        build_train_transform(_cfg_with("[{HorizontalFlp: {}}]"))


def test_bad_transform_parameters_name_the_item():
    with pytest.raises(ConfigError, match=r"augment.train\[1\]: bad parameters for RandomCrop"):
        build_train_transform(_cfg_with("[HorizontalFlip, {RandomCrop: {hieght: 3}}]"))


def test_eval_resize_keeps_mask_native():
    cfg = _cfg_with("[]", eval_size="[16, 24]")
    spec = input_spec(cfg.data)
    seen = []
    run = lambda b: seen.append(b.shape) or np.zeros((len(b), 2, *b.shape[2:]), np.float32)  # noqa: E731
    maps = predict_maps([np.zeros((20, 30, 3), np.uint8)], run, spec)
    assert seen == [(1, 3, 16, 24)] and maps[0].classes.shape == (20, 30)


def test_training_normalises_as_every_backend_does():
    """One normalisation: the training pipeline's last step is processing.normalise, equal to
    the bit to preprocess (and to albumentations' Normalize, which trained the built-in models)."""
    import albumentations as A

    cfg = _cfg_with("[]")
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    out = build_train_transform(cfg)(image=image, mask=np.zeros((20, 30), np.uint8))["image"].numpy()
    assert np.array_equal(out, preprocess(image, cfg.data.mean, cfg.data.std, None))
    reference = A.Normalize(mean=cfg.data.mean, std=cfg.data.std, max_pixel_value=255.0)(image=image)["image"]
    assert np.array_equal(out, reference.transpose(2, 0, 1))


def test_collate_pads_masks_with_ignore():
    batch = pad_collate(255)(
        [
            {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "index": 0},
            {"image": torch.ones(3, 6, 3), "mask": torch.ones(6, 3, dtype=torch.long), "index": 1},
        ]
    )
    assert batch["image"].shape == (2, 3, 6, 5) and batch["mask"].shape == (2, 6, 5)
    assert batch["mask"][0, 5, 0] == 255 and batch["image"][0, :, 5, 0].sum() == 0


def test_misspelt_transform_parameter_is_an_error():
    with pytest.raises(ConfigError, match=r"augment.train\[0\]: bad parameters for HorizontalFlip: .*'pp'"):
        build_train_transform(_cfg_with("[{HorizontalFlip: {pp: 0.5}}]"))


def test_transforms_without_strict_checks_still_build_and_refuse_bad_keywords():
    # RandomRotate90 and MedianBlur take no `strict` argument in albumentations 2.x
    t = build_train_transform(_cfg_with("[{RandomRotate90: {p: 1.0}}, {MedianBlur: {blur_limit: [3, 5]}}]"))
    out = t(image=np.arange(12, dtype=np.uint8).reshape(3, 4, 1).repeat(3, 2), mask=np.zeros((3, 4), np.uint8))
    assert out["mask"].shape in {(3, 4), (4, 3)}
    with pytest.raises(ConfigError, match=r"augment.train\[0\]: bad parameters for RandomRotate90: .*'pp'"):
        build_train_transform(_cfg_with("[{RandomRotate90: {pp: 1.0}}]"))


def test_a_split_can_be_a_union_with_pairs_kept_or_dropped_by_name(tmp_path):
    for name in ("seqA_1", "seqA_2", "seqB_1"):
        save_png(tmp_path / "img" / f"{name}.png", np.zeros((4, 4, 3), np.uint8))
        save_png(tmp_path / "ann" / f"{name}.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "train.txt").write_text("img/seqA_1.png ann/seqA_1.png\nimg/seqB_1.png ann/seqB_1.png\n")
    (tmp_path / "val.txt").write_text("img/seqA_2.png ann/seqA_2.png\n")
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path}",
            "data.train=[{list: train.txt, exclude: seqB_*}, val.txt]",
            "data.val={list: train.txt, include: [seqB_*]}",
        ],
    )
    assert [i.stem for i, _ in find_pairs(cfg.data.train)] == ["seqA_1", "seqA_2"]
    assert [i.stem for i, _ in find_pairs(cfg.data.val)] == ["seqB_1"]
    assert cfg.data.train.describe().endswith("train.txt (without seqB_*) + " + str(tmp_path / "val.txt"))
    with pytest.raises(DataError, match="holds no image/mask pairs"):
        find_pairs(SplitSpec.model_validate({"list": str(tmp_path / "val.txt"), "include": "seqB_*"}))


def test_a_split_is_a_union_or_one_source_not_both():
    with pytest.raises(ConfigError, match="data.train.*a list of splits or one list file"):
        load_config(None, ["data.train={list: a.txt, parts: [b.txt]}"])


def _with_orientation(path, array, orient, fmt=None):
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[274] = orient
    im.save(path, format=fmt, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orient", range(1, 9))
def test_images_are_turned_upright_as_their_exif_says(tmp_path, orient):
    from PIL import ImageOps

    array = np.random.default_rng(orient).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _with_orientation(tmp_path / "a.png", array, orient)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(read_image(path), expected)


def test_a_phone_photo_pairs_with_a_mask_drawn_as_viewers_show_it(tmp_path):
    """A JPEG stored 180x240 (HxW) with orientation 6 shows as 240x180: a mask of that
    shape is its mask, for the header check and for the full read alike."""
    from segtool.data.doctor import quick_check

    (tmp_path / "images").mkdir()
    photo = _with_orientation(tmp_path / "images" / "p.jpg", np.zeros((180, 240, 3), np.uint8), 6)
    mask = save_png(tmp_path / "masks" / "p.png", np.zeros((240, 180), np.uint8))
    assert read_image(photo).shape == (240, 180, 3)
    quick_check([(photo, mask)])  # no size mismatch
    image, mask = SegDataset([(photo, mask)], data_cfg()).load(0)
    assert image.shape[:2] == (240, 180) and mask.shape == (240, 180)


def test_an_image_above_the_pixel_limit_is_refused_by_name_before_decoding(tmp_path, monkeypatch):
    path = save_png(tmp_path / "big.png", np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", "1000")
    with pytest.raises(
        DataError, match=r"image .*big.png declares 50x40 = 0.0 megapixels, above the limit .*SEGTOOL_MAX_PIXELS"
    ):
        read_image(path)
    with pytest.raises(DataError, match="mask .*big.png declares 50x40"):
        read_mask(path, data_cfg())
    monkeypatch.setenv("SEGTOOL_MAX_PIXELS", "2000")
    assert read_image(path).shape == (40, 50, 3)


def test_rgb_masks_of_any_mode_are_read_as_colours(tmp_path):
    # Palette PNGs whose palette order differs from file to file: each through its own palette.
    expected = [[0, 1, 0], [0, 0, 2]]
    for name, order in (
        ("a.png", [(0, 0, 0), (255, 0, 0), (0, 0, 255)]),
        ("b.png", [(0, 0, 255), (0, 0, 0), (255, 0, 0)]),
    ):
        index = {c: i for i, c in enumerate(order)}
        classes = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
        im = Image.fromarray(np.array([[index[tuple(classes[v])] for v in row] for row in expected], np.uint8), "L")
        im = im.convert("P")
        im.putpalette([c for colour in order for c in colour])
        im.save(tmp_path / name)
        assert read_mask(tmp_path / name, data_cfg(mask_format="rgb")).tolist() == expected, name
    # Grey + alpha (LA) and grey (L): grey colours, e.g. black and white classes.
    bw = DataConfig.model_validate(
        {
            "classes": [{"name": "bg", "color": [0, 0, 0]}, {"name": "fg", "color": [255, 255, 255]}],
            "mask_format": "rgb",
        }
    )
    grey = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "la.png")
    assert read_mask(tmp_path / "la.png", bw).tolist() == [[0, 1], [1, 0]]
    save_png(tmp_path / "idx.png", np.array([[0, 1], [1, 0]], np.uint8))
    with pytest.raises(
        DataError,
        match=r"colours not in data.classes: \(1,1,1\).*values are class indices, set data.mask_format: index",
    ):
        read_mask(tmp_path / "idx.png", bw)


def test_duplicate_yaml_keys_name_both_lines(tmp_path):
    from segtool.config import load_config as load

    path = tmp_path / "dup.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 1\nmodel:\n  head: unet\ntrain:\n  epochs: 50\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: key 'train' appears twice, on lines 2 and 6; keep one of them"):
        load(path)
    path.write_text("train:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="key 'epochs' appears twice, on lines 2 and 4"):
        load(path)
    with pytest.raises(ConfigError, match="override 'train={epochs: 1, epochs: 2}': key 'epochs' appears twice"):
        load(None, ["train={epochs: 1, epochs: 2}"])


@pytest.mark.parametrize("size", ["[0,0]", "[-3,5]"])
def test_eval_size_must_be_positive(size):
    with pytest.raises(ConfigError, match="eval_size is \\[height, width\\] in pixels, both >= 1"):
        load_config(None, [f"data.eval_size={size}"])


def test_a_jpeg_mask_is_told_to_be_a_png(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[4:12, 4:12] = 2
    Image.fromarray(labels * 100).save(tmp_path / "m.jpg", quality=70)  # values 0/200 blur at the edges
    with pytest.raises(DataError, match="m.jpg has values .* JPEG is lossy .* save masks as PNG"):
        read_mask(tmp_path / "m.jpg", data_cfg())


def _two_classes(**kw):
    return DataConfig.model_validate(
        {
            "classes": [
                {"name": "background", "color": [0, 0, 0], "value": 0},
                {"name": "cell", "color": [255, 255, 255], "value": 255},
            ],
            **kw,
        }
    )


def test_binary_masks_stored_as_0_and_255_map_to_their_classes(tmp_path):
    p = save_png(tmp_path / "m.png", np.array([[0, 255], [255, 7]], np.uint8))
    with pytest.raises(
        DataError, match=r"values \[7\] that are no class's value \(background=0, cell=255\) and not ignored"
    ):
        read_mask(p, _two_classes())
    assert read_mask(p, _two_classes(ignore_values=[7], ignore_index=254)).tolist() == [[0, 1], [1, 254]]
    three = DataConfig.model_validate(
        {"classes": [{"name": n, "color": [v, v, v], "value": v} for n, v in (("a", 0), ("b", 128), ("c", 255))]}
    )
    assert read_mask(save_png(tmp_path / "t.png", np.array([[0, 128, 255]], np.uint8)), three).tolist() == [[0, 1, 2]]


def test_class_values_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give every class its stored `value`, or none"):
        DataConfig.model_validate(
            {"classes": [{"name": "a", "color": [0, 0, 0], "value": 0}, {"name": "b", "color": [1, 1, 1]}]}
        )
    with pytest.raises(ValidationError, match="two classes share a stored value: 5"):
        DataConfig.model_validate({"classes": [{"name": n, "color": [0, 0, 0], "value": 5} for n in "ab"]})
    with pytest.raises(ValidationError, match="value 255 is both a class's value and in ignore_values"):
        _two_classes(ignore_values=[255])


def test_ignore_values_and_colours_mark_unlabelled_pixels(tmp_path):
    p = save_png(tmp_path / "i.png", np.array([[0, 1, 9]], np.uint8))
    assert read_mask(p, data_cfg(ignore_values=[9])).tolist() == [[0, 1, 255]]
    rgb = np.array([[[0, 0, 0], [128, 128, 128], [255, 0, 0]]], np.uint8)
    q = save_png(tmp_path / "c.png", rgb)
    with pytest.raises(DataError, match=r"\(128,128,128\).*or to data.ignore_colors"):
        read_mask(q, data_cfg(mask_format="rgb"))
    assert read_mask(q, data_cfg(mask_format="rgb", ignore_colors=[[128, 128, 128]])).tolist() == [[0, 255, 1]]
