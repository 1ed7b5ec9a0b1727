"""The one pre/post-processing path (segtool.inference.processing), checked against
independent references, and the promise it keeps: a prediction never depends on the
other images of its batch, on either backend, in predict or evaluate."""

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segtool.config import parse_split
from segtool.inference.backends import open_predictor
from segtool.inference.processing import argmax_classes, postprocess, preprocess, resize_logits, run_batched
from segtool.models import build_model
from segtool.models.checkpoint import save_checkpoint
from segtool.reporting.evaluate_torch import evaluate_checkpoint


@pytest.fixture
def checkpoint(tiny_cfg, tmp_path):
    """An untrained LR-ASPP model whose predictions vary over the image (a briefly trained
    one may call everything background, which no padding could change); its global
    pooling sees the whole input, padding included."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg.model, tiny_cfg.data.num_classes, pretrained=False)
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight)  # the classifiers start near zero: widen them
    with torch.no_grad():  # BatchNorm statistics of real activations
        model.train()(torch.randn(4, 3, 64, 96))
    model.eval()
    path = tmp_path / "random.pt"
    save_checkpoint(path, tiny_cfg, model)
    return path


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


def test_preprocess_matches_albumentations_resize_and_normalize():
    rng = np.random.default_rng(1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in (None, (32, 40), (37, 53)):
        steps = [A.Resize(*size)] if size else []
        ref = A.Compose([*steps, A.Normalize(mean=mean, std=std, max_pixel_value=255.0)])(image=image)["image"]
        out = preprocess(image, mean, std, size)
        assert out.dtype == np.float32 and out.shape == (3, *(size or image.shape[:2]))
        assert np.abs(out - ref.transpose(2, 0, 1)).max() < 1e-5


def test_resize_logits_is_torch_bilinear_without_corner_alignment():
    logits = np.random.default_rng(2).standard_normal((11, 23, 31)).astype(np.float32)
    for size in ((92, 124), (17, 20), (23, 31)):
        ref = F.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
        assert np.abs(resize_logits(logits, size) - ref).max() < 1e-4
    assert np.array_equal(postprocess(logits, (23, 31)).classes, logits.argmax(0))


def test_run_batched_stacks_equal_shapes_only_and_keeps_order():
    inputs = [np.full((3, h, w), i, np.float32) for i, (h, w) in enumerate([(4, 6), (8, 8), (4, 6), (5, 5), (8, 8)])]
    seen = []

    def run(batch):
        seen.append(batch.shape)
        return batch[:, :1] * 2

    out = run_batched(inputs, run)
    assert seen == [(2, 3, 4, 6), (2, 3, 8, 8), (1, 3, 5, 5)]
    assert [float(o[0, 0, 0]) for o in out] == [0, 2, 4, 6, 8] and [o.shape[1:] for o in out] == [
        x.shape[1:] for x in inputs
    ]


def test_a_prediction_does_not_depend_on_its_batch(checkpoint):
    predict = open_predictor(checkpoint).predict_batch
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)
    alone = predict([small])[0]
    assert len(np.unique(alone)) > 1
    assert np.array_equal(predict([small, big])[0], alone)
    assert np.array_equal(predict([big, small, small])[2], alone)


def test_evaluation_does_not_depend_on_which_images_share_a_batch(checkpoint, tiny_data, tmp_path):
    # Sizes differ, so a padded batch would change the small images' predictions.
    images, masks = sorted((tiny_data / "val" / "images").iterdir()), sorted((tiny_data / "val" / "masks").iterdir())
    big_img, big_mask = tmp_path / "big.png", tmp_path / "big_mask.png"
    Image.open(images[0]).resize((200, 150), Image.BILINEAR).save(big_img)
    Image.open(masks[0]).resize((200, 150), Image.NEAREST).save(big_mask)
    lines = [f"{big_img} {big_mask}"] + [f"{i} {m}" for i, m in zip(images, masks)]

    def cm(entries, name):
        (tmp_path / name).write_text("\n".join(entries) + "\n")
        report = evaluate_checkpoint(checkpoint, parse_split(str(tmp_path / name)), progress=False)
        return np.array(report.metrics["confusion_matrix"])

    together = cm(lines, "all.txt")
    assert (together.sum(0) > 0).sum() > 1  # more than one class predicted
    apart = cm(lines[:1], "a.txt") + cm(lines[1:], "b.txt")
    assert np.array_equal(together, apart)
    assert np.array_equal(cm(lines[::-1], "reversed.txt"), together)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_shuffled_inputs_and_any_batch_size_give_byte_identical_masks(checkpoint, tmp_path, backend):
    from dataclasses import replace

    from segtool.inference.backends import open_predictor
    from segtool.inference.outputs import predict_files

    model = checkpoint
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        from segtool.training.export import export_model

        model = tmp_path / "m.onnx"
        export_model(checkpoint, model, data=parse_split(str(_folder_split(tmp_path))))
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (h, w) in enumerate([(45, 60), (90, 120), (45, 60), (60, 45), (90, 120), (45, 60), (33, 71)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    base = open_predictor(model)
    files = sorted(str(p) for p in folder.iterdir())
    outputs = []
    for batch, streams, order in (
        (1, 1, files),
        (4, 1, files[::-1]),
        (3, 2, [files[k] for k in (3, 0, 6, 1, 5, 2, 4)]),
    ):
        out = tmp_path / f"out_{batch}_{streams}"
        predictor = replace(base, batch_size=batch, streams=streams)
        assert len(predict_files(order, out, predictor, progress=False, overlays=False).written) == 7
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1] == outputs[2]


def _folder_split(tmp_path):
    """A one-pair images/masks folder for export's parity check."""
    root = tmp_path / "split"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "masks" / "a.png")
    return root


@pytest.mark.parametrize("shape", [(300, 410), (64, 64), (40, 700), (512, 512)])
def test_tiles_cover_the_image_and_agree_with_a_whole_pixelwise_prediction(shape):
    from segtool.inference.processing import tile_starts, tiled_maps

    h, w = shape
    x = np.random.default_rng(7).standard_normal((3, h, w)).astype(np.float32)
    run = lambda b: b * np.array([1.0, 0.5, 2.0], np.float32)[None, :, None, None]  # noqa: E731  # pixelwise "logits"
    got = tiled_maps((h, w), 3, lambda y, x0, th, tw: x[:, y : y + th, x0 : x0 + tw], run, (128, 160), 32).classes
    assert got.shape == (h, w) and np.array_equal(got, run(x[None])[0].argmax(0))
    for length, tile in ((h, 128), (w, 160)):
        starts = tile_starts(length, min(tile, length), 32)
        covered = np.zeros(length, bool)
        for s0 in starts:
            covered[s0 : s0 + min(tile, length)] = True
        assert covered.all() and starts[-1] + min(tile, length) == length


def test_predict_and_evaluate_by_tiles(checkpoint, tiny_data, tmp_path):
    from segtool.inference.backends import open_predictor
    from segtool.inference.processing import Tiling

    image = np.random.default_rng(8).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    whole = open_predictor(checkpoint, backend="torch", tile=False).predict_batch([image])[0]
    one_window = open_predictor(checkpoint, backend="torch", tile=True).predict_batch([image])[0]
    assert np.array_equal(one_window, whole)  # a 512x512 window holds the whole 300x420 image
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["data"].update(tile_size=[64, 96], tile_overlap=16)
    torch.save(ckpt, tmp_path / "small_tiles.pt")
    tiled = open_predictor(tmp_path / "small_tiles.pt", backend="torch", tile=True).predict_batch([image])[0]
    assert tiled.shape == (300, 420) and tiled.max() < 4
    small = Tiling((64, 96), 16, 0)
    assert small.applies(10, 10) and not Tiling(above=None).applies(10**4, 10**4)
    report = evaluate_checkpoint(checkpoint, parse_split(str(tiny_data / "val")), progress=False, tile=True)
    assert report.images == 4 and 0 <= report.miou <= 1


def test_tile_settings_are_checked():
    from pydantic import ValidationError

    from segtool.config import DataConfig

    with pytest.raises(ValidationError, match="tile_overlap 64 must be smaller than the tile"):
        DataConfig(tile_size=(64, 64))


def test_confidence_is_the_top_softmax_probability_whole_and_by_tiles():
    from segtool.inference.processing import decide, tiled_maps

    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((5, 37, 53)) * 4).astype(np.float32)
    soft = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    maps = decide(logits, confidence=True)
    assert np.array_equal(maps.classes, logits.argmax(0))
    assert maps.confidence.dtype == np.float32 and np.allclose(maps.confidence, soft.max(0), atol=1e-6)
    assert decide(logits).confidence is None
    # By tiles, overlapping windows see the same pixelwise logits: the mean is that logit,
    # so the tiled confidence is the whole image's.
    x = rng.standard_normal((3, 150, 170)).astype(np.float32)
    run = lambda b: np.concatenate([b, b[:, :1] * 0.5], axis=1) * 3  # noqa: E731  # 4 pixelwise "logits"
    tiled = tiled_maps(
        (150, 170), 4, lambda y, x0, th, tw: x[:, y : y + th, x0 : x0 + tw], run, (64, 80), 24, confidence=True
    )
    whole = decide(run(x[None])[0], confidence=True)
    assert np.array_equal(tiled.classes, whole.classes)
    assert np.allclose(tiled.confidence, whole.confidence, atol=1e-5)
