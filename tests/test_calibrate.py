"""train.loss.calibrate: decisions that give back part of the class weights' pull, chosen
on val and carried by the checkpoint into evaluate, predict and export."""

import math

import numpy as np
import pytest
import torch

from conftest import run
from segtool.config import load_config
from segtool.data.datasets import config_split
from segtool.data.pairs import find_pairs
from segtool.errors import CheckpointError
from segtool.inference.torch_backend import torch_predictor
from segtool.models import build_model
from segtool.models.checkpoint import load_checkpoint, load_model, teacher_model
from segtool.reporting.evaluate import evaluate_file, score_split
from segtool.reporting.evaluate_torch import evaluate_checkpoint
from segtool.training.calibrate import SHARES, best_share, calibration_offsets, calibration_record
from segtool.training.loop import train

SKEWED = "train.loss.class_weights=[0.1,10,10,10]"  # pulls hard toward the three shapes


def test_no_shifts_without_unequal_weights(tiny_config):
    for extra in (
        ["train.loss.calibrate=false", SKEWED],
        ["train.loss.class_weights=null"],
        ["train.loss.class_weights=[2,2,2,2]"],
    ):
        assert calibration_offsets(load_config(tiny_config, extra)) is None, extra
    shifts = calibration_offsets(load_config(tiny_config, [SKEWED]))
    assert len(shifts) == len(SHARES) and not shifts[0].any()
    np.testing.assert_allclose(shifts[-1], -np.log([0.1, 10, 10, 10]), rtol=1e-6)  # share 1: the whole log-weight
    np.testing.assert_allclose(shifts[2], 0.5 * shifts[-1], rtol=1e-6)


def test_the_smallest_share_wins_a_tie():
    assert best_share([0.5, 0.7, 0.7, 0.6, 0.2]) == 1
    assert best_share([0.4, 0.4, 0.4, 0.4, 0.4]) == 0
    assert calibration_record([np.zeros(2, np.float32)] * 5, 0) == {"decision_share": 0.0}  # no offsets stored


def test_shifted_decisions_come_from_the_same_pass(tiny_cfg):
    """Offset 0 counts exactly what the model decides; a large offset toward one class
    makes every labelled pixel that class."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg.model, 4, pretrained=False).eval()
    predictor = torch_predictor(model, tiny_cfg, torch.device("cpu"), batch_size=2)
    push = np.array([0, 0, 1000, 0], np.float32)
    pairs = find_pairs(config_split(tiny_cfg.data, "val"))
    scores = score_split(predictor, pairs, tiny_cfg.data, offsets=[np.zeros(4, np.float32), push], progress=False)
    assert np.array_equal(scores.offset_confusion[0], scores.confusion)
    cm = scores.offset_confusion[1]
    assert cm[:, 2].sum() == cm.sum() > 0  # every pixel predicted "box"


# Synthetic data a small model learns in seconds (as test_train's learning test).
LEARNS = [
    "data.synthetic={num_train: 64, num_val: 16}",
    "model.width_mult=0.35",
    "train.epochs=4",
    "train.batch_size=4",
    "train.workers=0",
    "train.plots=false",
    "augment.train=[HorizontalFlip]",
]


def test_a_calibrated_checkpoint_decides_as_its_validation_did(tmp_path):
    """best.pt records the chosen share and offsets; evaluate (torch and ONNX) scores exactly
    the val mIoU that chose it, and `segtool info` names the choice."""
    cfg = load_config(None, [*LEARNS, SKEWED])
    result = train(cfg, tmp_path / "c", progress=False)
    best = load_checkpoint(tmp_path / "c" / "best.pt")
    share = best["decision_share"]
    assert share > 0  # these weights over-paint the shapes; a plain arg-max is not the best decision
    assert best["decision_bias"] == pytest.approx([-share * math.log(w) for w in (0.1, 10, 10, 10)], rel=1e-5)
    _, model = load_model(tmp_path / "c" / "best.pt")
    assert model.calibration_offsets.tolist() == pytest.approx(best["decision_bias"])
    report = evaluate_checkpoint(tmp_path / "c" / "best.pt", progress=False)
    assert report.miou == pytest.approx(result.best_miou, abs=1e-9) == pytest.approx(best["metrics"]["miou"], abs=1e-9)
    info = run("info", tmp_path / "c" / "best.pt")
    assert f"calibration: {100 * share:.0f}% (chosen on val; train.loss.calibrate)" in info.output
    onnx = tmp_path / "c.onnx"
    assert run("export", tmp_path / "c" / "best.pt", "--out", onnx).exit_code == 0
    assert evaluate_file(onnx, config_split(cfg.data, "val"), progress=False).miou == pytest.approx(
        report.miou, abs=1e-6
    )
    # The same run without calibration saves plain arg-max decisions, and scores no better on val.
    plain = train(load_config(None, [*LEARNS, SKEWED, "train.loss.calibrate=false"]), tmp_path / "p", progress=False)
    assert "decision_share" not in load_checkpoint(tmp_path / "p" / "best.pt")
    assert plain.best_miou <= result.best_miou


def test_a_teacher_gives_its_own_probabilities(tiny_config, tmp_path):
    cfg = load_config(tiny_config, [SKEWED, "train.epochs=2"])
    train(cfg, tmp_path / "t", progress=False)
    assert teacher_model(str(tmp_path / "t" / "best.pt"), cfg).calibration_offsets is None


def test_offsets_that_do_not_fit_are_refused(tiny_config, tmp_path):
    train(load_config(tiny_config, [SKEWED, "train.epochs=2"]), tmp_path / "d", progress=False)
    ckpt = load_checkpoint(tmp_path / "d" / "best.pt")
    ckpt["decision_bias"] = [0.0, 1.0]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="2 calibration offsets for 4 classes"):
        load_model(tmp_path / "bad.pt")
