"""The road-scene models shipped inside the package: the default one and those named."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run, run_in_fresh_process
from segtool.models.checkpoint import ASSETS, BUILTIN, BUILTINS, resolve_checkpoint


def test_names_resolve_to_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(None) == BUILTIN == resolve_checkpoint("camvid") == resolve_checkpoint("builtin")
    assert resolve_checkpoint("camvid-large") == ASSETS / "camvid-large.pt"
    assert all(p.is_file() for p in BUILTINS.values())
    (tmp_path / "camvid").write_bytes(b"")  # a file of that name is the one the user means
    assert resolve_checkpoint("camvid") == Path("camvid")


@pytest.mark.parametrize("name, width", [(None, "x0.5"), ("camvid-large", "x0.75")])
def test_info_and_predict_with_a_built_in_model(name, width, tmp_path):
    chosen = ["-c", name] if name else []
    info = run("info", *([name] if name else []))
    assert info.exit_code == 0, info.output
    assert f"MobileNetV2 {width} encoder" in info.output and "10 Bicyclist" in info.output
    assert "research use" in info.output and "val metrics" in info.output
    street = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(street)
    result = run("predict", street, *chosen, "--out", tmp_path / "p", "-q")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "p" / "street_mask.png"))
    assert mask.shape == (90, 120) and mask.max() < 11


def test_evaluating_a_built_in_model_needs_data():
    result = run("evaluate", "camvid-large", "-q")
    assert result.exit_code == 2 and "pass --data" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["camvid", "camvid-large"])
def test_each_built_in_model_ships_as_the_onnx_file_of_its_checkpoint(name):
    pytest.importorskip("onnxruntime")
    import torch

    from segtool.inference.onnx_model import OnnxSegmenter
    from segtool.models.checkpoint import load_model

    cfg, model = load_model(ASSETS / f"{name}.pt")
    seg = OnnxSegmenter(ASSETS / f"{name}.onnx", threads=1)
    assert [c["name"] for c in seg.meta["classes"]] == [c.name for c in cfg.data.classes]
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(seg.logits(x) - ref).max() < 1e-3


def test_default_predict_runs_the_onnx_file_without_torch_and_gives_the_torch_masks(tmp_path):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(tmp_path / f"s{i}.png")
    assert not run_in_fresh_process(["predict", tmp_path, "--out", tmp_path / "fast", "-q", "--no-overlay"])
    result = run(
        "predict",
        *sorted(tmp_path.glob("s*.png")),
        "--backend",
        "torch",
        "--out",
        tmp_path / "slow",
        "-q",
        "--no-overlay",
    )
    assert result.exit_code == 0, result.output
    fast = [np.asarray(Image.open(tmp_path / "fast" / f"s{i}_mask.png")) for i in range(3)]
    slow = [np.asarray(Image.open(tmp_path / "slow" / f"s{i}_mask.png")) for i in range(3)]
    agree = sum((a == b).sum() for a, b in zip(fast, slow)) / sum(a.size for a in fast)
    assert agree >= 0.999
