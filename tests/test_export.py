"""Export parity (fp32, int8, TorchScript), self-describing metadata, and the ONNX Runtime
predict path, which must give PyTorch's masks without importing torch."""

import errno
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")

from conftest import run, run_in_fresh_process  # noqa: E402
from segtool.config import load_config  # noqa: E402
from segtool.errors import SegtoolError  # noqa: E402
from segtool.inference.backends import open_predictor  # noqa: E402
from segtool.inference.onnx_model import OnnxSegmenter  # noqa: E402
from segtool.models import build_model  # noqa: E402
from segtool.models.checkpoint import save_checkpoint  # noqa: E402
from segtool.training import export as export_mod  # noqa: E402
from segtool.training.export import export_model  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_data):
    """A small random-weight model with BatchNorm statistics that are not the identity."""
    from conftest import TINY_YAML

    root = tmp_path_factory.mktemp("export")
    (root / "c.yaml").write_text(TINY_YAML.format(root=tiny_data))
    cfg = load_config(root / "c.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, 48, 64) * 2)
    path = root / "model.pt"
    save_checkpoint(path, cfg, model.eval(), epoch=1, metrics={"miou": 0.5, "pixel_accuracy": 0.9})
    return path


def test_onnx_fp32_parity_and_metadata(checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    report = export_model(checkpoint, out)
    assert report.parity.agreement >= 0.999 and report.parity.max_abs_diff < 1e-3
    seg = OnnxSegmenter(out)
    assert [c["name"] for c in seg.meta["classes"]] == ["background", "disc", "box", "triangle"]
    assert seg.meta["mean"] == [0.485, 0.456, 0.406] and seg.meta["precision"] == "fp32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_onnx_accepts_any_batch_and_size(checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    export_model(checkpoint, out)
    seg = OnnxSegmenter(out)
    for shape in [(1, 3, 48, 64), (3, 3, 37, 91)]:
        assert seg.logits(np.random.rand(*shape).astype(np.float32)).shape == (shape[0], 4, *shape[2:])


def test_onnx_masks_equal_pytorch_masks(checkpoint, tmp_path, tiny_data):
    out = tmp_path / "m.onnx"
    export_model(checkpoint, out)
    seg = OnnxSegmenter(out)
    torch_batch = open_predictor(checkpoint).predict_batch
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tiny_data / "val" / "images").iterdir())]
    images.append(np.random.default_rng(0).integers(0, 255, (33, 71, 3), dtype=np.uint8))
    ours, theirs = seg(images), torch_batch(images)
    agree = sum((a == b).sum() for a, b in zip(ours, theirs)) / sum(a.size for a in ours)
    assert agree >= 0.999 and all(a.shape == img.shape[:2] for a, img in zip(ours, images))


def test_int8_export_is_quantized_and_checked(checkpoint, tmp_path, tiny_data):
    out = tmp_path / "q.onnx"
    report = export_model(checkpoint, out, int8=True, calibration=None)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert OnnxSegmenter(out).meta["precision"] == "int8"
    q = report.int8
    assert (
        q.calibration_images == 8
        and 0 <= q.miou_int8 <= 1
        and q.miou_fp32 - q.miou_int8 <= export_mod.MAX_INT8_MIOU_LOSS
    )


def test_int8_that_loses_too_much_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "MAX_INT8_MIOU_LOSS", -1.0)  # any int8 model now "loses too much"
    out = tmp_path / "q.onnx"
    with pytest.raises(SegtoolError, match="int8 model loses .* nothing written"):
        export_model(checkpoint, out, int8=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_writes_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "MIN_AGREEMENT", 1.01)
    with pytest.raises(SegtoolError, match="parity check failed"):
        export_model(checkpoint, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_export_is_dynamic(checkpoint, tmp_path):
    out = tmp_path / "m.ts"
    report = export_model(checkpoint, out, fmt="torchscript")
    assert report.parity.agreement >= 0.999
    extra = {"segtool.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["segtool.json"])["num_classes"] == 4
    assert loaded(torch.randn(1, 3, 41, 59)).shape == (1, 4, 41, 59)


def test_onnx_predict_does_not_import_torch(checkpoint, tmp_path, tiny_data):
    model = tmp_path / "m.onnx"
    export_model(checkpoint, model)
    assert not run_in_fresh_process(
        ["predict", tiny_data / "val" / "images", "--model", model, "--out", tmp_path / "p", "-q"]
    )
    assert len(list((tmp_path / "p").glob("*_mask.png"))) == 4


def test_export_out_errors_are_one_line(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(SegtoolError, match="--out .*models is a folder; name the file to write"):
        export_model(checkpoint, folder)

    def read_only(*args, **kwargs):  # what a read-only folder answers (root would not get it from chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(export_mod.tempfile, "mkdtemp", read_only)
    with pytest.raises(SegtoolError, match="cannot write into .*models \\(Permission denied\\); choose another --out"):
        export_model(checkpoint, folder / "m.onnx")
    assert list(folder.iterdir()) == []


def test_export_onto_a_full_disk_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_mod, "_set_metadata", full)
    with pytest.raises(SegtoolError, match="cannot write .*m.onnx \\(No space left on device\\); nothing written"):
        export_model(checkpoint, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_exports_given_where_a_checkpoint_goes_are_named(checkpoint, tmp_path):
    onnx_file, script = tmp_path / "m.onnx", tmp_path / "m.ts.pt"
    export_model(checkpoint, onnx_file)
    export_model(checkpoint, script, fmt="torchscript")
    result = run("export", onnx_file, "--out", tmp_path / "again.onnx")
    assert result.exit_code == 2 and "m.onnx is an ONNX model (from segtool export), not a checkpoint" in result.output
    result = run("evaluate", onnx_file, "-q")  # an exported file is scored, but needs the data named
    assert result.exit_code == 2 and "m.onnx carries no val split; pass --data" in result.output
    result = run("evaluate", script, "-q")
    assert result.exit_code == 2 and "m.ts.pt is a TorchScript export, not a segtool checkpoint" in result.output
    result = run("info", onnx_file)
    assert result.exit_code == 0, result.output
    assert "(ONNX, fp32" in result.output and "classes: 0 background" in result.output


def test_the_onnx_files_score_what_the_checkpoint_scores_without_torch(checkpoint, tmp_path, tiny_data):
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    export_model(checkpoint, fp32)
    export_model(checkpoint, int8, int8=True)
    val = str(tiny_data / "val")
    reports = [tmp_path / "fp32.json", tmp_path / "int8.json"]
    assert not run_in_fresh_process(
        *(["evaluate", m, "--data", val, "--json", r, "-q"] for m, r in zip((fp32, int8), reports))
    )
    torch_json = tmp_path / "pt.json"
    assert run("evaluate", checkpoint, "--data", val, "--json", torch_json, "-q").exit_code == 0
    pt, f32, i8 = (json.loads(p.read_text()) for p in (torch_json, *reports))
    assert f32["model_sha256"] != i8["model_sha256"] and f32["model"] == str(fp32)
    assert pt["data_id"] == f32["data_id"] == i8["data_id"] and pt["images"] == f32["images"] == 4
    # Within what export allows: 99.9% argmax agreement for fp32, 1 mIoU point for int8.
    assert abs(f32["miou"] - pt["miou"]) < 0.005
    assert f32["miou"] - i8["miou"] <= export_mod.MAX_INT8_MIOU_LOSS
