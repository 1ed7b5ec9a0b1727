"""The Python API (segtool.load / predict / evaluate / train / export): its contracts, and
that the CLI is the same path (the same bytes for the same input and model)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segtool
from conftest import run, save_png

ROOT = Path(__file__).resolve().parents[1]
STREET = ROOT / "docs" / "examples" / "u_street.jpg"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The tiny trained checkpoint and its ONNX export: (pt, onnx)."""
    _, out = trained
    onnx_path = tmp_path_factory.mktemp("exp") / "tiny.onnx"
    segtool.export(out / "best.pt", onnx_path)
    return out / "best.pt", onnx_path


def test_builtin_model_predicts_paths_pil_images_and_arrays_alike():
    model = segtool.load()  # the default built-in model, on ONNX Runtime
    assert [c.name for c in model.classes][:2] == ["Sky", "Building"] and len(model.classes[0].color) == 3
    assert "backend onnxruntime" in model.describe()
    by_path = model.predict(STREET)
    h, w = np.asarray(Image.open(STREET)).shape[:2]
    assert by_path.mask.shape == (h, w) and by_path.mask.dtype == np.uint8
    assert by_path.confidence.shape == (h, w) and by_path.confidence.dtype == np.float32
    assert 1 / len(model.classes) - 1e-6 <= by_path.confidence.min() and by_path.confidence.max() <= 1 + 1e-6
    by_pil = model.predict(Image.open(STREET))
    by_array = model.predict(np.asarray(Image.open(STREET).convert("RGB")))
    assert np.array_equal(by_path.mask, by_pil.mask) and np.array_equal(by_path.mask, by_array.mask)
    assert np.array_equal(by_path.confidence, by_array.confidence)
    assert by_path.overlay().shape == (h, w, 3)
    shares = by_path.shares()
    assert set(shares) == {c.name for c in model.classes} and sum(shares.values()) == pytest.approx(1.0)
    assert model.predict(STREET, confidence=False).confidence is None


def test_many_inputs_stream_in_order_without_reading_ahead(tmp_path):
    model = segtool.load("camvid")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 8 * (i % 3), 56, 3), dtype=np.uint8) for i in range(9)]
    taken = []

    def source():
        for i, img in enumerate(images):
            taken.append(i)
            yield img

    stream = model.predict(source())
    assert taken == []  # nothing runs until the caller asks
    first = next(stream)
    p = model.predictor
    assert len(taken) <= p.batch_size * (p.streams + 1)  # bounded read-ahead, not the whole input
    rest = list(stream)
    assert len(rest) == 8 and taken == list(range(9))
    for img, pred in zip(images, [first, *rest]):
        assert pred.mask.shape == img.shape[:2]
        assert np.array_equal(pred.mask, model.predict(img).mask)  # batch company changes nothing


def test_a_folder_streams_its_images(tmp_path):
    for i in range(3):
        save_png(tmp_path / f"{i}.png", np.full((24, 32, 3), 40 * i, np.uint8))
    preds = list(segtool.load().predict(tmp_path))
    assert [p.source.name for p in preds] == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_and_api_write_the_same_bytes(exported, tiny_data, tmp_path, backend):
    pt, onnx_path = exported
    model_file = pt if backend == "torch" else onnx_path
    image = sorted((tiny_data / "val" / "images").iterdir())[0]
    result = run("predict", image, "--model", model_file, "--out", tmp_path / "cli", "--confidence", "-q")
    assert result.exit_code == 0, result.output
    model = segtool.load(model_file)
    assert model.predictor.backend == ("torch" if backend == "torch" else "onnxruntime")
    written = model.predict(image).save(tmp_path / "api")
    assert [p.name for p in written] == [
        f"{image.stem}_mask.png",
        f"{image.stem}_overlay.jpg",
        f"{image.stem}_confidence.png",
    ]
    for path in written:
        assert path.read_bytes() == (tmp_path / "cli" / path.name).read_bytes(), path.name


def test_confidence_of_both_backends_agrees_within_one_level(exported, tiny_data, tmp_path):
    pt, onnx_path = exported
    images = sorted((tiny_data / "val" / "images").iterdir())
    for backend, model_file in (("torch", pt), ("onnx", onnx_path)):
        result = run(
            "predict", *images, "--model", model_file, "--out", tmp_path / backend, "--confidence", "--no-overlay", "-q"
        )
        assert result.exit_code == 0, result.output
    for image in images:
        a, b = (
            np.asarray(Image.open(tmp_path / k / f"{image.stem}_confidence.png"), np.int16) for k in ("torch", "onnx")
        )
        assert a.shape == b.shape and (np.abs(a - b) <= 1).mean() >= 0.99


def test_evaluate_is_the_cli_json_report(exported, tiny_data, tmp_path):
    _, onnx_path = exported
    val = tiny_data / "val"
    result = run("evaluate", onnx_path, "--data", val, "--json", tmp_path / "r.json", "-q")
    assert result.exit_code == 0, result.output
    report = segtool.load(onnx_path).evaluate(val)
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["miou"] <= 1.0 and len(report["confusion_matrix"]) == 4


def test_train_then_export_then_load(tiny_config, tmp_path):
    run_ = segtool.train(tiny_config, overrides={"train.epochs": 1, "model.head": "lraspp"}, out=tmp_path / "run")
    assert run_.epochs == 1 and run_.best.is_file() and run_.last.is_file() and 0.0 <= run_.best_miou <= 1.0
    report = segtool.export(run_, tmp_path / "m.onnx")
    assert report.path.is_file() and report.parity.agreement >= 0.999
    pred = segtool.load(tmp_path / "m.onnx").predict(np.zeros((30, 40, 3), np.uint8))
    assert pred.mask.shape == (30, 40)
    with pytest.raises(segtool.SegtoolError, match="pass save\\(out, name=...\\)"):
        pred.save(tmp_path / "p")
    assert [p.name for p in pred.save(tmp_path / "p", "zeros")][0] == "zeros_mask.png"


def test_user_errors_raise_segtool_errors(tmp_path):
    with pytest.raises(segtool.CheckpointError, match="missing.pt not found"):
        segtool.load(tmp_path / "missing.pt")
    with pytest.raises(segtool.ConfigError, match="backend 'tpu'"):
        segtool.load(backend="tpu")
    model = segtool.load()
    with pytest.raises(segtool.DataError, match="HxWx3 uint8"):
        model.predict(np.zeros((4, 4), np.float32))
    with pytest.raises(segtool.DataError, match="nope.png not found"):
        model.predict(tmp_path / "nope.png")
    with pytest.raises(segtool.SegtoolError, match="pass --data"):
        model.evaluate()
    with pytest.raises(segtool.ConfigError):
        segtool.train(tmp_path / "missing.yaml")


def test_docs_example_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "api.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Road" in done.stdout and (tmp_path / "u_street_mask.png").is_file()


def test_the_readme_python_block_runs_as_written(tmp_path):
    """The README's API example, in a fresh folder holding what a clone has."""
    import re
    import shutil

    block = re.search(r"```python\n(import segtool\n.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    for folder in ("docs", "configs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ClassInfo(name='Road', color=(128, 64, 128))" in done.stdout
    assert (tmp_path / "preds" / "u_street_confidence.png").is_file() and (tmp_path / "model.int8.onnx").is_file()
