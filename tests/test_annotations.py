"""COCO, LabelMe and CVAT annotations read directly: parsers, the rasteriser against the
reference tools, the cache, and init / check-data / convert / train on them.

The samples in tests/data/annotations/ were written for these tests (see its README); the
COCO references there were drawn by pycocotools' annToMask. LabelMe's references are drawn
here with Pillow as labelme's shape_to_mask draws them.
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from conftest import run
from segtool.config import DataConfig, SplitSpec, load_config
from segtool.data.annotations import (
    LabelMap,
    default_map,
    fill_polygon,
    read_annotations,
    resolve,
    rle_decode,
    rle_encode,
)
from segtool.data.pairs import bind_labels, config_split, find_pairs, scan_pairs
from segtool.errors import DataError

SAMPLES = Path(__file__).parent / "data" / "annotations"


def _noise(path: Path, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(path)


@pytest.fixture
def coco(tmp_path) -> Path:
    folder = tmp_path / "coco"
    folder.mkdir()
    shutil.copy(SAMPLES / "coco" / "instances.json", folder)
    for i, rec in enumerate(json.loads((folder / "instances.json").read_text())["images"]):
        _noise(folder / rec["file_name"], rec["height"], rec["width"], i)
    return folder


@pytest.fixture
def labelme(tmp_path) -> Path:
    folder = tmp_path / "labelme"
    shutil.copytree(SAMPLES / "labelme", folder)
    _noise(folder / "scene_1.jpg", 240, 320)  # scene_2 carries its image as imageData
    return folder


@pytest.fixture
def cvat(tmp_path) -> Path:
    folder = tmp_path / "cvat"
    (folder / "images").mkdir(parents=True)
    shutil.copy(SAMPLES / "cvat" / "annotations.xml", folder)
    for i in range(2):
        _noise(folder / "images" / f"frame_00{i}.png", 120, 160, i)
    return folder


def _data(names, **more) -> DataConfig:
    classes = [{"name": n, "color": [i, i, i]} for i, n in enumerate(names)]
    return DataConfig(classes=classes, **more)


def _masks(path: Path, data: DataConfig | None = None, **kw) -> dict[str, np.ndarray]:
    spec = SplitSpec(annotations=path, **kw)
    pairs, problems = scan_pairs(bind_labels(spec, data) if data else spec)
    assert not problems, problems
    return {img.stem: np.asarray(Image.open(mask)) for img, mask in pairs}


# --------------------------------------------------------------------------- RLE


def test_compressed_rle_round_trips_and_matches_the_file():
    rng = np.random.default_rng(1)
    for h, w in ((1, 1), (7, 5), (120, 160)):
        m = rng.random((h, w)) > 0.7
        m[0, 0] = True  # a mask that starts with 1s: the first run of 0s is empty
        enc = rle_encode(m)
        assert enc["size"] == [h, w]
        assert np.array_equal(rle_decode(enc["counts"], h, w), m)
    anns = json.loads((SAMPLES / "coco" / "instances.json").read_text())["annotations"]
    crowd = [a["segmentation"] for a in anns if a["iscrowd"]]
    compressed = next(s for s in crowd if isinstance(s["counts"], str))
    listed = next(s for s in crowd if isinstance(s["counts"], list))
    assert rle_encode(rle_decode(compressed["counts"], *compressed["size"]))["counts"] == compressed["counts"]
    assert rle_decode(listed["counts"], *listed["size"]).sum() == sum(listed["counts"][1::2])


def test_an_rle_that_does_not_cover_its_size_is_refused():
    with pytest.raises(ValueError, match="not 4x4"):
        rle_decode([3, 2], 4, 4)


# --------------------------------------------------------------------------- agreement


def test_coco_masks_agree_with_pycocotools_annToMask(coco):
    masks = _masks(coco / "instances.json")
    for stem, mask in masks.items():
        ref = np.asarray(Image.open(SAMPLES / "coco" / f"annToMask_{stem}.png"))
        agreement = (mask == ref).mean()
        assert agreement >= 0.995, (stem, agreement)


def test_coco_agreement_on_fresh_polygons_when_pycocotools_is_installed(tmp_path):
    mu = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(7)
    h, w = 200, 300
    agree = total = 0
    for _ in range(30):
        n = int(rng.integers(5, 25))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(10, 60, n)
        pts = np.stack([150 + r * np.cos(ang), 100 + r * np.sin(ang)], 1).round(2)
        ref = mu.decode(mu.merge(mu.frPyObjects([pts.ravel().tolist()], h, w)))
        mine = np.zeros((h, w), np.uint8)
        fill_polygon(mine, pts, 1)
        agree += (mine == ref).sum()
        total += ref.size
    assert agree / total >= 0.995


def _labelme_reference(shape: dict, h: int, w: int) -> np.ndarray:
    """labelme's shape_to_mask (labelme/_utils/shape.py), with Pillow as it draws."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    xy = [tuple(p) for p in shape["points"]]
    kind = shape["shape_type"]
    if kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif kind == "line":
        draw.line(xy=xy, fill=1, width=10)
    elif kind == "linestrip":
        draw.line(xy=xy, fill=1, width=10, joint="curve")
    else:
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.asarray(mask, bool)


def _labelme_agreement(folder: Path, kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """scene_1 with only shapes of these kinds: (segtool's mask, labelme2voc's)."""
    doc = json.loads((folder / "scene_1.json").read_text())
    doc["shapes"] = [s for s in doc["shapes"] if s["shape_type"] in kinds]
    (folder / "scene_1.json").write_text(json.dumps(doc))
    h, w = doc["imageHeight"], doc["imageWidth"]
    names = ["_background_", "car", "lane", "road", "sign"]
    ids = {n: i for i, n in enumerate(names)} | {"__ignore__": 255}
    ref = np.zeros((h, w), np.uint8)
    for shape in doc["shapes"]:
        ref[_labelme_reference(shape, h, w)] = ids[shape["label"]]
    data = _data(["background", "car", "lane", "road", "sign"])
    return _masks(folder, data)["scene_1"], ref


def test_labelme_areas_agree_with_labelme2voc(labelme):
    mask, ref = _labelme_agreement(labelme, ("polygon", "rectangle", "circle"))
    agreement = (mask == ref).mean()
    assert agreement >= 0.995, agreement


def test_labelme_lines_are_as_wide_as_labelme2voc_draws_them(labelme):
    """Pillow's wide lines are its own (flat ends half a pixel off, slanted ones thinner):
    the same stroke, not the same pixels along its edges."""
    mask, ref = _labelme_agreement(labelme, ("line", "linestrip"))
    lane = mask == 2
    iou = (lane & (ref == 2)).sum() / (lane | (ref == 2)).sum()
    assert iou >= 0.8 and abs(lane.sum() / (ref == 2).sum() - 1) < 0.15, iou


@pytest.mark.skipif(not os.environ.get("SEGTOOL_LABELME_EXAMPLE"), reason="SEGTOOL_LABELME_EXAMPLE not set")
def test_labelme_published_example_agrees_with_its_labelme2voc_output():
    """SEGTOOL_LABELME_EXAMPLE: labelme's examples/semantic_segmentation folder (GPL-3, so not
    copied here): its data_annotated/ against its committed data_dataset_voc/ output."""
    root = Path(os.environ["SEGTOOL_LABELME_EXAMPLE"])
    names = [n.strip() for n in (root / "labels.txt").read_text().splitlines() if n.strip()][1:]
    labels = LabelMap(tuple(names), {n: i for i, n in enumerate(names)})  # __ignore__: the ignore index
    resolved, _ = resolve(root / "data_annotated", labels)
    assert not resolved.problems
    for image, mask in resolved.pairs:
        ref = np.asarray(Image.open(root / "data_dataset_voc" / "SegmentationClass" / f"{image.stem}.png"))
        assert (np.asarray(Image.open(mask)) == ref).mean() >= 0.995


# --------------------------------------------------------------------------- parsing and drawing


def test_labelme_shapes_ignore_points_and_embedded_images(labelme):
    found = read_annotations(labelme)
    assert found.fmt == "labelme" and found.labels == ["__ignore__", "car", "lane", "road", "sign"]
    scene1, scene2 = found.images
    assert [s.kind for s in scene1.shapes] == ["polygon", "rectangle", "circle", "line", "line", "polygon"]
    assert any("is a point" in n for n in scene1.notes)
    assert scene2.image is None and scene2.embedded  # no scene_2.jpg: its imageData is the image
    masks = _masks(labelme)
    assert masks["scene_2"].shape == (48, 64)
    m = masks["scene_1"]
    assert m[170, 285] == 255  # __ignore__
    assert m[60, 240] == 4  # the sign's circle (classes: background, car, lane, road, sign)


def test_file_order_decides_overlaps(labelme):
    doc = json.loads((labelme / "scene_2.json").read_text())
    square = [[0.0, 0.0], [64.0, 0.0], [64.0, 48.0], [0.0, 48.0]]
    doc["shapes"] = [
        {"label": "road", "points": square, "shape_type": "polygon"},
        {"label": "car", "points": square, "shape_type": "polygon"},
    ]
    (labelme / "scene_2.json").write_text(json.dumps(doc))
    assert (_masks(labelme)["scene_2"] == 1).all()  # car, drawn last
    doc["shapes"].reverse()
    (labelme / "scene_2.json").write_text(json.dumps(doc))
    assert (_masks(labelme)["scene_2"] == 3).all()  # road


def test_cvat_z_order_masks_boxes_and_polylines(cvat):
    found = read_annotations(cvat / "annotations.xml")
    assert found.fmt == "cvat" and found.labels == ["building", "road", "tree", "wire"]
    m = _masks(cvat / "annotations.xml")["frame_000"]
    # classes: background 0, building 1, road 2, tree 3, wire 4
    assert m[40, 50] == 1  # the box (z 1) over the road polygon (z 0) that follows it in the file
    assert m[70 + 5, 100 + 6] == 3 and m[70 + 10, 100 + 15] == 0  # the mask and its hole
    assert m[5, 0] == 4  # the polyline, drawn line_width wide
    assert any("marks no area" in n for img in found.images for n in img.notes)
    assert (_masks(cvat / "annotations.xml")["frame_001"] == 0).all()


def test_ignore_labels_sources_and_unlabelled(coco):
    data = DataConfig(
        classes=[
            {"name": "stuff", "color": [0, 0, 0]},
            {"name": "vehicle", "color": [1, 1, 1], "sources": ["car"]},
            {"name": "person", "color": [2, 2, 2]},
        ],
        ignore_labels=["tree"],
        unlabelled="ignore",
    )
    masks = _masks(coco / "instances.json", data)
    stems = sorted(masks)  # the references' classes: 0 background, 1 person, 2 car, 3 tree
    ref = np.concatenate([np.asarray(Image.open(SAMPLES / "coco" / f"annToMask_{k}.png")) for k in stems])
    m = np.concatenate([masks[k] for k in stems])
    assert (m[ref == 0] == 255).mean() > 0.99  # unlabelled: ignored
    assert (m[ref == 3] == 255).mean() > 0.99  # tree: an ignore label
    assert (m[ref == 2] == 1).mean() > 0.98  # car drawn as vehicle
    assert (m[ref == 1] == 2).mean() > 0.98


def test_lines_take_data_line_width(labelme):
    thin = _masks(labelme, _data(["background", "car", "lane", "road", "sign"], line_width=2))["scene_1"]
    thick = _masks(labelme, _data(["background", "car", "lane", "road", "sign"], line_width=12))["scene_1"]
    assert (thick == 2).sum() > 3 * (thin == 2).sum()


# --------------------------------------------------------------------------- cache


def test_the_cache_draws_once_and_redraws_when_the_file_changes(labelme, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "cache"))
    labels = default_map(read_annotations(labelme).labels)
    first, _ = resolve(labelme, labels)
    again, _ = resolve(labelme, labels)
    assert first.drawn == 2 and again.drawn == 0
    assert [m for _, m in first.pairs] == [m for _, m in again.pairs]
    doc = json.loads((labelme / "scene_1.json").read_text())
    doc["shapes"][0]["points"][0] = [1.0, 1.0]
    (labelme / "scene_1.json").write_text(json.dumps(doc))
    changed, _ = resolve(labelme, labels)
    assert changed.drawn == 1 and changed.pairs[0][1] != first.pairs[0][1]
    other = default_map(["car", "lane", "road", "sign", "zebra"])  # another class mapping: another key
    assert resolve(labelme, other)[0].drawn == 2


# --------------------------------------------------------------------------- errors


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_malformed_json_and_xml_are_one_line_errors(tmp_path, labelme, cvat):
    (labelme / "scene_1.json").write_text('{"shapes": [')
    _one_line_error(run("convert", labelme, "--out", tmp_path / "a"), "scene_1.json", "not valid JSON", "line 1")
    (cvat / "annotations.xml").write_text("<annotations><image name='x'></annotations>")
    _one_line_error(
        run("convert", cvat / "annotations.xml", "--out", tmp_path / "b"), "annotations.xml", "not valid XML"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_polygon_of_two_points_names_the_file_and_shape(tmp_path, labelme):
    doc = json.loads((labelme / "scene_1.json").read_text())
    doc["shapes"][0]["points"] = doc["shapes"][0]["points"][:2]
    (labelme / "scene_1.json").write_text(json.dumps(doc))
    _one_line_error(run("convert", labelme, "--out", tmp_path / "out"), "scene_1.json shape 0 (road)", "at least 3")
    assert not (tmp_path / "out").exists()


def test_an_unknown_label_suggests_the_near_one(tmp_path, labelme):
    config = tmp_path / "lm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "train": {"annotations": str(labelme)},
                    "val": {"annotations": str(labelme)},
                    "classes": [
                        {"name": n, "color": [i, i, i]}
                        for i, n in enumerate(["background", "cars", "lane", "road", "sign"])
                    ],
                }
            }
        )
    )
    with pytest.raises(
        DataError, match=r"scene_1.json shape 1 \(car\): label 'car' is not in data.classes; did you mean 'cars'"
    ):
        find_pairs(config_split(load_config(config).data, "train"))
    result = run("check-data", config)
    assert result.exit_code == 1 and "did you mean 'cars'" in result.output


def test_a_missing_image_and_an_rle_of_another_size(tmp_path, coco):
    (coco / "street_1.png").unlink()
    _one_line_error(run("convert", coco / "instances.json", "--out", tmp_path / "a"), "street_1.png", "not found")
    _noise(coco / "street_1.png", 120, 160)
    doc = json.loads((coco / "instances.json").read_text())
    crowd = next(a for a in doc["annotations"] if a["iscrowd"] and isinstance(a["segmentation"]["counts"], str))
    crowd["segmentation"]["size"] = [60, 80]
    (coco / "instances.json").write_text(json.dumps(doc))
    _one_line_error(
        run("convert", coco / "instances.json", "--out", tmp_path / "b"),
        f"annotation id {crowd['id']}",
        "RLE of size [60, 80]",
    )


# --------------------------------------------------------------------------- init, check-data, convert, train


@pytest.mark.parametrize("layout", ["coco", "labelme", "cvat"])
def test_init_writes_a_config_for_each_layout(tmp_path, coco, labelme, cvat, layout):
    target = {"coco": coco / "instances.json", "labelme": labelme, "cvat": cvat / "annotations.xml"}[layout]
    if layout == "labelme":  # three images at least, for a val split to be held out
        for k in (3, 4):
            doc = json.loads((labelme / "scene_1.json").read_text())
            doc["imagePath"] = f"scene_{k}.jpg"
            (labelme / f"scene_{k}.json").write_text(json.dumps(doc))
            _noise(labelme / f"scene_{k}.jpg", 240, 320, k)
    if layout == "cvat":  # four images at least, for a val split to be held out
        extra = ""
        for k in (2, 3):
            shutil.copy(cvat / "images" / "frame_000.png", cvat / "images" / f"frame_00{k}.png")
            extra += f'<image id="{k}" name="frame_00{k}.png" width="160" height="120"></image>'
        xml = (cvat / "annotations.xml").read_text().replace("</annotations>", extra + "</annotations>")
        (cvat / "annotations.xml").write_text(xml)
    if layout == "coco":
        doc = json.loads((coco / "instances.json").read_text())
        doc["images"].append({**doc["images"][0], "id": 99, "file_name": "street_3.png"})
        (coco / "instances.json").write_text(json.dumps(doc))
        _noise(coco / "street_3.png", 120, 160, 3)
    out = tmp_path / f"{layout}.yaml"
    result = run("init", target, "--out", out)
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    names = [c.name for c in cfg.data.classes]
    expected = {
        "coco": ["background", "person", "car", "tree"],  # COCO: by category id
        "labelme": ["background", "car", "lane", "road", "sign"],  # by name; __ignore__ is no class
        "cvat": ["background", "building", "road", "tree", "wire"],
    }[layout]
    assert names == expected
    assert "%" in out.read_text() and "annotations" in out.read_text()
    assert config_split(cfg.data, "train").annotations is not None
    result = run("check-data", out)
    assert "class pixels: background" in result.output, result.output


def test_check_data_reports_annotation_notes(tmp_path, labelme):
    doc = json.loads((labelme / "scene_1.json").read_text())
    doc["shapes"].append({"label": "car", "points": [[300.0, 200.0], [400.0, 280.0]], "shape_type": "rectangle"})
    (labelme / "scene_1.json").write_text(json.dumps(doc))
    result = run("check-data", labelme)
    assert result.exit_code == 0, result.output
    assert "is a point: points mark no area, so it is ignored" in result.output
    assert "shape 7 (car) lies partly outside the 320x240 image" in result.output


def test_convert_writes_masks_segtool_reads_back(tmp_path, coco):
    out = tmp_path / "export"
    result = run("convert", coco / "instances.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert "4 classes: 0 background, 1 person, 2 car, 3 tree" in result.output
    assert (out / "labels.txt").read_text().split() == ["background", "person", "car", "tree"]
    lines = (out / "all.txt").read_text().splitlines()
    assert lines[0] == "images/street_0.png masks/street_0.png"
    mask = np.asarray(Image.open(out / "masks" / "street_0.png"))
    assert mask.dtype == np.uint8 and mask.ndim == 2
    assert np.array_equal(mask, _masks(coco / "instances.json")["street_0"])  # the same rasteriser, one path
    checked = run("check-data", out / "all.txt")
    assert checked.exit_code == 0, checked.output
    again = run("convert", coco / "instances.json", "--out", out)
    _one_line_error(again, "exists")


def test_a_short_train_on_coco_annotations(tmp_path, coco):
    pytest.importorskip("torch")
    config = tmp_path / "coco.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "coco",
                "data": {
                    "train": str(coco / "instances.json"),
                    "val": str(coco / "instances.json"),
                    "classes": [
                        {"name": n, "color": [40 * i, 0, 0]}
                        for i, n in enumerate(["background", "person", "car", "tree"])
                    ],
                },
                "model": {"head": "lraspp", "width_mult": 0.35, "head_channels": 16},
                "train": {"epochs": 1, "batch_size": 3, "workers": 0, "plots": False},
                "augment": {"train": [{"HorizontalFlip": {"p": 0.5}}]},
            }
        )
    )
    result = run("train", config, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    # evaluate --data on an annotation file draws it in the checkpoint's classes
    scored = run("evaluate", tmp_path / "run" / "best.pt", "--data", coco / "instances.json", "-q")
    assert scored.exit_code == 0, scored.output
    assert "3 images from" in scored.output and "tree" in scored.output
