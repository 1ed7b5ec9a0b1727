"""The road-scene models shipped inside the package: the default one and those named."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run
from segtool.engine.checkpoint import ASSETS, BUILTIN, BUILTINS, resolve_checkpoint


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
    assert result.exit_code == 1 and "pass --data" in result.output and "Traceback" not in result.output
