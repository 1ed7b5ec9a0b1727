import math

import torch

from segtool.metrics import confusion_matrix, format_table, summarize


def test_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, target, 3, 255)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]


def test_metrics_by_hand():
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    r = summarize(cm, ["a", "b", "c"])
    iou = [1 / 2, 2 / 3, 1.0]
    assert [c["iou"] for c in r["per_class"]] == iou
    assert math.isclose(r["miou"], sum(iou) / 3)
    assert math.isclose(r["pixel_accuracy"], 4 / 5)
    assert math.isclose(r["mean_accuracy"], (1 / 2 + 1 + 1) / 3)
    assert [c["dice"] for c in r["per_class"]] == [2 / 3, 4 / 5, 1.0]
    assert [c["pixels"] for c in r["per_class"]] == [2, 2, 1]


def test_absent_class_is_left_out_of_the_mean():
    cm = torch.tensor([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    r = summarize(cm, ["a", "b", "c"])
    assert r["per_class"][2]["iou"] is None
    assert r["miou"] == 1.0


def test_false_positives_of_an_unlabelled_class_still_count():
    cm = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    r = summarize(cm, ["a", "b", "c"])
    assert r["per_class"][2]["iou"] == 0.0
    assert math.isclose(r["miou"], (2 / 3 + 1 + 0) / 3)


def test_table_lists_every_class():
    r = summarize(torch.eye(2, dtype=torch.long), ["road", "sky"])
    table = format_table(r)
    assert "road" in table and "sky" in table and "mIoU 100.0" in table
