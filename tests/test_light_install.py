"""The light install (`pip install segtool`, no torch): every command that promises to work
without the train extra does, and every one that needs it says so in one line.

Each command runs in a fresh Python process in which torch, torchvision, albumentations
and matplotlib cannot be imported (as on a machine that never installed them). CI also
installs the light profile into a venv of its own and runs predict there (.ci/run)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import save_png

ROOT = Path(__file__).resolve().parents[1]
STREET = ROOT / "docs" / "examples" / "u_street.jpg"
TRAIN_ONLY = ("torch", "torchvision", "albumentations", "matplotlib")

_WITHOUT_TRAIN = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import torch` now fails, and importlib finds no torch
from segtool.cli import main
sys.argv = ["segtool", *json.loads(sys.argv[1])]
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code or 0
print("train modules imported:", sorted(m for m in {blocked!r} if sys.modules.get(m) is not None))
sys.exit(code)
"""


def light(*argv):
    """Run a segtool command line as on the light install: (exit code, stdout, stderr)."""
    code = _WITHOUT_TRAIN.format(blocked=TRAIN_ONLY)
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps([str(a) for a in argv])], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "train modules imported: []" in done.stdout, done.stdout
    return done.returncode, done.stdout, done.stderr


def test_predict_evaluate_info_init_and_check_data_need_no_torch(tiny_data, tmp_path):
    code, out, err = light("predict", STREET, "--out", tmp_path / "preds", "--confidence")
    assert code == 0, err
    assert "model camvid (built-in), backend onnxruntime, device cpu" in out
    assert (tmp_path / "preds" / "u_street_confidence.png").is_file()
    val = tiny_data / "val"  # 4 classes, all within the built-in model's 11
    code, out, err = light("evaluate", "camvid", "--data", val, "--json", tmp_path / "r.json", "--min-miou", "0", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 4
    code, out, err = light("info")
    assert code == 0 and "ONNX" in out and "Pedestrian" in out, err
    code, out, err = light("init", tiny_data, "--out", tmp_path / "tiny.yaml")
    assert code == 0 and (tmp_path / "tiny.yaml").is_file(), err
    code, out, err = light("check-data", tmp_path / "tiny.yaml")
    assert code == 0, err


def test_an_exported_model_predicts_and_evaluates_without_torch(trained, tiny_data, tmp_path):
    from conftest import run

    _, out = trained
    assert run("export", out / "best.pt", "--out", tmp_path / "m.onnx").exit_code == 0
    code, stdout, err = light(
        "predict", tiny_data / "val" / "images", "--model", tmp_path / "m.onnx", "--out", tmp_path / "p"
    )
    assert code == 0 and "wrote 4 masks" in stdout, err
    code, stdout, err = light("evaluate", tmp_path / "m.onnx", "--data", tiny_data / "val", "-q")
    assert code == 0, err
    code, stdout, err = light("info", tmp_path / "m.onnx")
    assert code == 0 and "disc" in stdout, err


@pytest.mark.parametrize(
    "argv, needs",
    [
        (["train", "configs/quickstart.yaml"], "training needs the train extra"),
        (["export", "camvid", "--out", "{tmp}/m.onnx"], "export needs the train extra"),
        (
            ["predict", str(STREET), "--model", "{tmp}/ckpt.pt", "--out", "{tmp}/p"],
            "the PyTorch checkpoint {tmp}/ckpt.pt needs the train extra",
        ),
        (
            ["evaluate", "{tmp}/ckpt.pt", "--data", "{tmp}"],
            "the PyTorch checkpoint {tmp}/ckpt.pt needs the train extra",
        ),
        (["predict", str(STREET), "--tta", "--out", "{tmp}/p"], "tta needs the train extra"),
        (["info", "{tmp}/ckpt.pt"], "needs the train extra"),
    ],
)
def test_what_needs_the_train_extra_says_so_in_one_line(tmp_path, argv, needs):
    (tmp_path / "ckpt.pt").write_bytes(b"a checkpoint")
    save_png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save_png(tmp_path / "masks" / "a.png", np.zeros((8, 8), np.uint8))
    code, out, err = light(*[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'segtool[train]'" in lines[0], err
    assert needs.format(tmp=tmp_path) in lines[0], err


def test_import_segtool_loads_no_torch():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, segtool; segtool.load().predict(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'albumentations') if m in sys.modules))",
            str(STREET),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
