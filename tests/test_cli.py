"""The real CLI, end to end, through Typer's CliRunner and (for `python -m`) a subprocess."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run


def test_train_writes_the_run_folder(trained):
    config, out = trained
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.csv", "last.pt", "best.pt"}
    assert "head: unet" in (out / "config.yaml").read_text()  # the positional override applied
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def test_evaluate_json_and_gate(trained, tmp_path):
    _, out = trained
    report = tmp_path / "report.json"
    result = run("evaluate", out / "best.pt", "--json", report, "--min-miou", 0.0, "-q")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "triangle" in result.output
    data = json.loads(report.read_text())
    assert set(data) >= {"miou", "pixel_accuracy", "mean_accuracy", "mean_dice", "per_class", "confusion_matrix"}
    assert len(data["per_class"]) == 4 and data["images"] == 4
    failed = run("evaluate", out / "best.pt", "--min-miou", 1.0, "-q")
    assert failed.exit_code == 1 and "FAIL" in failed.output


def test_evaluate_another_split(trained, tiny_data):
    _, out = trained
    result = run("evaluate", out / "best.pt", "--data", tiny_data / "train", "-q")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("8 images from")


def test_predict_files_folders_and_globs(trained, tiny_data, tmp_path):
    _, out = trained
    odd = tmp_path / "in" / "odd.jpg"
    odd.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(odd)
    preds = tmp_path / "preds"
    result = run(
        "predict",
        odd,
        tiny_data / "val" / "images",
        f"{tiny_data}/train/images/000[01].png",
        "-c",
        out / "best.pt",
        "--out",
        preds,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "wrote 7 masks and overlays" in result.output
    mask = Image.open(preds / "odd_mask.png")
    assert mask.mode == "P" and mask.size == (53, 37)
    assert np.asarray(mask).max() < 4
    assert Image.open(preds / "odd_overlay.jpg").size == (53, 37)
    again = run("predict", odd, "-c", out / "best.pt", "--out", preds, "-q")
    assert again.exit_code == 0 and "1 already there" in again.output


def test_predict_reports_and_skips_broken_files(trained, tiny_data, tmp_path):
    _, out = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run("predict", folder, "missing.png", "-c", out / "best.pt", "--out", tmp_path / "p", "-q")
    assert result.exit_code == 2  # an unreadable input is an input error; the rest are written
    assert "skipped missing.png: not found" in result.output
    assert "broken.png" in result.output and "Traceback" not in result.output
    assert (tmp_path / "p" / "good_mask.png").is_file()
    assert not (tmp_path / "p" / "broken_mask.png").exists()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["train", "nope.yaml"], 2, "config file nope.yaml not found"),
        (["evaluate", "nope.pt"], 2, "checkpoint nope.pt not found"),
        (["info", "nope.pt"], 2, "checkpoint nope.pt not found"),
        (["evaluate", "x.pt", "--min-miou", "50"], 2, ""),
    ],
)
def test_user_errors_are_one_line(args, code, message):
    result = run(*args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_config_key_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  haed: unet\n")
    result = run("train", bad)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {bad}: unknown key 'model.haed'; did you mean 'head'?"]


def test_train_refuses_to_overwrite_a_run(trained):
    config, out = trained
    result = run("train", config, "--out", out)
    assert result.exit_code == 2 and "pass --resume" in result.output


def test_resume_a_finished_run_is_a_no_op(trained):
    config, out = trained
    result = run("train", config, "--out", out, "--resume", "-q", "--set", "train.epochs=2", "model.head=unet")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output


def test_data_error_names_the_file(tmp_path, tiny_data):
    from conftest import TINY_YAML

    config = tmp_path / "c.yaml"
    config.write_text(TINY_YAML.format(root=tmp_path / "nowhere"))
    result = run("train", config, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "nowhere/train/images not found" in result.output
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_teacher_of_other_classes_is_a_one_line_error(tmp_path, tiny_data):
    from conftest import TINY_YAML

    config = tmp_path / "c.yaml"
    config.write_text(TINY_YAML.format(root=tiny_data))
    result = run("train", config, "--out", tmp_path / "r", "-q", "--set", "train.distill.teacher=camvid-large")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "train.distill.teacher" in lines[0] and "predicts 11 classes" in lines[0], lines
    assert not (tmp_path / "r" / "last.pt").exists()


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"format": "segtool-checkpoint", "payload": _Evil()}, bad)
    result = run("evaluate", bad)
    assert result.exit_code == 2 and "refused" in result.output
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_file_is_not_a_checkpoint(tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(pickle.dumps([1, 2]))
    result = run("evaluate", other)
    assert result.exit_code == 2 and "other.pt" in result.output


def test_help_shows_examples():
    for cmd in ([], ["train"], ["evaluate"], ["predict"]):
        result = run(*cmd, "--help")
        assert result.exit_code == 0
        assert "segtool" in result.output and ("Example" in result.output or "Quick start" in result.output)
    # Square brackets in help text are rich markup and vanish: defaults are written in parentheses.
    assert "(default:" in run("train", "--help").output and "(default:" in run("predict", "--help").output


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "segtool", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("segtool ")


def test_predict_masks_only(trained, tiny_data, tmp_path):
    _, out = trained
    result = run(
        "predict", tiny_data / "val" / "images", "-c", out / "best.pt", "--out", tmp_path / "p", "--no-overlay", "-q"
    )
    assert result.exit_code == 0 and "wrote 4 masks to" in result.output
    assert len(list((tmp_path / "p").glob("*_mask.png"))) == 4 and not list((tmp_path / "p").glob("*_overlay.*"))


def test_a_gpu_trained_checkpoint_runs_on_this_machine(trained, tiny_data, tmp_path):
    # train.device travels in the checkpoint's config as a record of the run; evaluate,
    # predict and export choose their own device (--device, default auto) and ignore it.
    _, out = trained
    ckpt = torch.load(out / "best.pt", weights_only=True)
    ckpt["config"]["train"].update(device="cuda", workers=7, batch_size=64)
    gpu = tmp_path / "gpu.pt"
    torch.save(ckpt, gpu)
    result = run("evaluate", gpu, "--data", tiny_data / "val", "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = run("evaluate", gpu, "--data", tiny_data / "val", "-q")
    assert result.exit_code == 0 and "4 images" in result.output, result.output
    result = run("predict", tiny_data / "val" / "images", "-c", gpu, "--out", tmp_path / "p", "-q")
    assert result.exit_code == 0 and "wrote 4 masks" in result.output, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_one_line(trained, tiny_data, tmp_path):
    _, out = trained
    commands = (
        ["evaluate", out / "best.pt", "--data", tiny_data / "val", "-q"],
        ["predict", tiny_data / "val" / "images", "-c", out / "best.pt", "--out", tmp_path / "p", "-q"],
    )
    for args in commands:
        result = run(*args, "--device", "cuda")
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            "error: --device is 'cuda' but no CUDA GPU is available on this machine; use 'auto' or 'cpu'"
        ]
    assert run("evaluate", out / "best.pt", "--device", "tpu").exit_code == 2


def test_nproc_relaunches_the_command_line_as_given():
    from segtool.cli import without_nproc

    argv = ["--debug", "evaluate", "m.pt", "--nproc", "2", "--data", "v.txt", "--device=cpu", "--nproc=3", "--tta"]
    assert without_nproc(argv) == ["--debug", "evaluate", "m.pt", "--data", "v.txt", "--device=cpu", "--tta"]


def test_resuming_a_finished_run_says_so(trained):
    config, out = trained
    result = run("train", config, "--out", out, "--resume", "--set", "train.epochs=2", "model.head=unet")
    assert result.exit_code == 0, result.output
    assert "all 2 epochs are trained; a larger train.epochs continues it" in result.output
    assert "epoch 3/2" not in result.output


def test_one_mask_is_one_mask(trained, tiny_data, tmp_path):
    _, out = trained
    image = next((tiny_data / "val" / "images").iterdir())
    result = run("predict", image, "-c", out / "best.pt", "--out", tmp_path / "p", "-q")
    assert result.exit_code == 0 and "wrote 1 mask and overlay to" in result.output, result.output
