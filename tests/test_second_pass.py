"""A second adversarial pass after round three (issue 33): what it still found, now one
line and exit 2 through the CLI, or a segtool error through the API."""

import numpy as np
import pytest
from PIL import Image

import segtool
from conftest import run, save_png


def _pairs(root, n, junk_mask=False):
    for i in range(n):
        save_png(root / "images" / f"{i}.png", np.full((16, 16, 3), 30 * i, np.uint8))
        save_png(root / "masks" / f"{i}.png", np.full((16, 16), i % 2, np.uint8))
    if junk_mask:
        (root / "masks" / f"{n - 1}.png").write_text("junk")
    return root


def _one_line(result, code, needle):
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in result.output, result.output


def test_init_names_an_unreadable_mask(tmp_path):
    data = _pairs(tmp_path / "d", 8, junk_mask=True)
    _one_line(run("init", data, "--out", tmp_path / "d.yaml"), 2, "7.png cannot be read")


def test_init_refuses_to_make_val_the_train_split(tmp_path):
    data = _pairs(tmp_path / "one", 1)
    _one_line(run("init", data, "--out", tmp_path / "one.yaml"), 2, "too few to hold a val split out")
    assert not (tmp_path / "one.yaml").exists()


def test_check_data_on_a_config_without_data_is_an_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("{}\n")
    _one_line(run("check-data", tmp_path / "empty.yaml"), 2, "nothing to check")


def test_export_refuses_a_suffix_predict_would_misread(trained, tmp_path):
    _, out = trained
    _one_line(run("export", out / "best.pt", "--out", tmp_path / "x.txt"), 2, "name it e.g.")
    _one_line(run("export", out / "best.pt", "--format", "torchscript", "--out", tmp_path / "x.onnx"), 2, ".pt or .ts")
    assert not list(tmp_path.iterdir())


def test_api_misuse_raises_segtool_errors_at_call_time(tmp_path):
    with pytest.raises(segtool.ConfigError, match="cannot load a int"):
        segtool.load(123)
    with pytest.raises(segtool.ConfigError, match="batch_size -2"):
        segtool.load(batch_size=-2)
    model = segtool.load()
    for bad, name in ((None, "NoneType"), (5, "int"), (b"\x89PNG", "bytes")):
        with pytest.raises(segtool.DataError, match=f"cannot predict a {name}"):
            model.predict(bad)  # raised here, not when a generator is consumed
    with pytest.raises(segtool.DataError, match="at least 1x1"):
        model.predict(Image.new("RGB", (0, 5)))
    with pytest.raises(segtool.DataError, match="list of image files"):
        model.predict_files(None, tmp_path / "p")
