import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run
from segtool.models.tta import TestTimeAugment


class Ramp(nn.Module):
    """Logits that depend on the column, so a view mirrored and not mirrored back shows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        ramp = torch.linspace(0, 3, x.shape[-1]).expand(*x.shape[:-3], 1, *x.shape[-2:])
        return self.conv(x) + ramp * torch.arange(4.0).view(1, 4, 1, 1)


def test_mirrored_view_is_mirrored_back():
    torch.manual_seed(0)
    model, x = Ramp(), torch.randn(2, 3, 9, 13)
    out = TestTimeAugment(model, scales=(1.0,), flip=True)(x)
    expected = (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)) / 2
    assert torch.allclose(out, expected.log(), atol=1e-6)
    alone = TestTimeAugment(model, scales=(1.0,), flip=False)(x)
    assert torch.allclose(alone, F.log_softmax(model(x), 1), atol=1e-5)


def test_views_come_back_at_the_input_size():
    out = TestTimeAugment(Ramp())(torch.randn(1, 3, 37, 53))  # 0.75x and 1.25x of odd sides
    assert out.shape == (1, 4, 37, 53)
    assert torch.allclose(out.exp().sum(1), torch.ones(1, 37, 53), atol=1e-5)
    with pytest.raises(ValueError):
        TestTimeAugment(Ramp(), scales=(0.0,))


def test_evaluate_and_predict_with_tta(trained, tiny_data, tmp_path):
    _, out = trained
    report = tmp_path / "r.json"
    result = run("evaluate", out / "best.pt", "--tta", "--json", report, "-q")
    assert result.exit_code == 0, result.output
    assert "test-time augmented (6 views)" in result.output
    assert json.loads(report.read_text())["tta"] is True
    preds = tmp_path / "p"
    result = run("predict", tiny_data / "val" / "images", "-c", out / "best.pt", "--tta", "--out", preds, "-q")
    assert result.exit_code == 0 and "wrote 4 masks" in result.output, result.output
    refused = run("predict", tiny_data / "val" / "images", "-m", tmp_path / "x.onnx", "--tta")
    assert refused.exit_code == 2 and "--tta runs PyTorch checkpoints only" in refused.output
    assert "Traceback" not in refused.output
