"""One exit-code rule for every command: 0 success, 1 a gate failed, 2 a usage, config or
input error, 130 interrupted (SIGINT), 143 terminated (SIGTERM). A test per code and command."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_YAML, run, save_png, write_config

ROOT = Path(__file__).resolve().parents[1]
STREET = ROOT / "docs" / "examples" / "u_street.jpg"


def test_help_states_the_rule():
    result = run("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "1 a gate failed" in text and "2 a usage, config or input error" in text and "143 terminated" in text


@pytest.fixture(scope="module")
def bits(trained, tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("codes")
    config, out = trained
    bad = write_config(root / "bad.yaml", TINY_YAML.format(root=tiny_data) + "colour: red\n")
    broken = root / "broken"
    for split in ("images", "masks"):
        (broken / split).mkdir(parents=True)
    save_png(broken / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save_png(broken / "masks" / "a.png", np.zeros((9, 8), np.uint8))  # the wrong size: check-data finds it
    return {"config": config, "run": out, "bad": bad, "broken": broken, "val": tiny_data / "val", "root": root}


def _args(bits, template):
    return [str(a).format(**{k: str(v) for k, v in bits.items()}) for a in template]


CASES = [
    # (command line, expected code)
    (["train", "{config}", "--out", "{root}/t0", "-q", "--set", "train.epochs=1"], 0),
    (["train", "{bad}", "--out", "{root}/t2", "-q"], 2),
    (["train", "{root}/missing.yaml", "-q"], 2),
    (["evaluate", "{run}/best.pt", "--data", "{val}", "-q"], 0),
    (["evaluate", "{run}/best.pt", "--data", "{val}", "--min-miou", "1.0", "-q"], 1),
    (["evaluate", "{run}/best.pt", "--data", "{root}/nowhere", "-q"], 2),
    (["evaluate", "{root}/missing.pt", "--data", "{val}", "-q"], 2),
    (["evaluate", "{run}/best.pt", "--min-miou", "7", "-q"], 2),
    (["predict", str(STREET), "--out", "{root}/p0", "-q"], 0),
    (["predict", "{root}/missing.png", "--out", "{root}/p2", "-q"], 2),
    (["predict", str(STREET), "--model", "{root}/missing.pt", "--out", "{root}/p2", "-q"], 2),
    (["predict", str(STREET), "--backend", "tpu", "-q"], 2),
    (["export", "{run}/best.pt", "--out", "{root}/m.onnx"], 0),
    (["export", "{root}/missing.pt", "--out", "{root}/m2.onnx"], 2),
    (["export", "{run}/best.pt", "--format", "tflite", "--out", "{root}/m3.onnx"], 2),
    (["info", "{run}/best.pt"], 0),
    (["info", "{root}/missing.pt"], 2),
    (["init", "{val}", "--out", "{root}/init.yaml"], 0),
    (["init", "{root}/nowhere", "--out", "{root}/init2.yaml"], 2),
    (["check-data", "{val}"], 0),
    (["check-data", "{broken}"], 1),
    (["check-data", "{root}/nowhere.txt"], 2),
]


@pytest.mark.parametrize("argv, code", CASES, ids=[f"{c[0][0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_exit_code(bits, argv, code):
    result = run(*_args(bits, argv))
    assert result.exit_code == code, result.output
    if code == 2:
        assert "Traceback" not in result.output


@pytest.mark.parametrize("command, point", [("predict", "predict:2"), ("evaluate", "eval:1")])
@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_command_exits_with_its_code(bits, command, point, sig, code, tmp_path):
    """The real process, stopped by the signal at a known point of its work."""
    if command == "predict":
        argv = [
            "predict",
            str(STREET),
            str(ROOT / "docs" / "examples"),
            "--out",
            str(tmp_path / "p"),
            "-q",
            "--batch-size",
            "1",
        ]
    else:
        argv = ["evaluate", str(bits["run"] / "best.pt"), "--data", str(bits["val"]), "-q"]
    env = {**os.environ, "SEGTOOL_FAULT": f"{point}:{sig}"}
    done = subprocess.run(
        [sys.executable, "-m", "segtool", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert ("terminated" if sig == "SIGTERM" else "interrupted") in done.stderr
