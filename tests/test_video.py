"""`segtool predict drive.mp4`: the overlay video keeps the frame count, rate and size;
Ctrl-C leaves a playable file of the frames done; other failures leave nothing."""

import cv2
import numpy as np
import pytest

from conftest import red_predictor, run
from segtool.inference.video import predict_video


def _video(path, frames=20, fps=12.0, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, : (i * 4) % size[0] + 8] = (40, 40, 220)
        writer.write(frame)
    writer.release()
    return path


def _props(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    props = (
        n,
        cap.get(cv2.CAP_PROP_FPS),
        int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    cap.release()
    return props


def _red(stop_after=None, fail=False):
    calls = [0]

    def count():
        calls[0] += 1
        if stop_after is not None and calls[0] > stop_after:
            raise (RuntimeError("decoder crashed") if fail else KeyboardInterrupt)

    return red_predictor(["dark", "red"], count)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_video_gets_an_overlay_video_of_the_same_frames_rate_and_size(trained, tmp_path, backend):
    _, out = trained
    model = out / "best.pt"
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        model = tmp_path / "m.onnx"
        assert run("export", out / "best.pt", "--out", model).exit_code == 0
    video = _video(tmp_path / "drive.mp4")
    result = run("predict", video, "-m", model, "--out", tmp_path / "p", "--video-masks", "-q")
    assert result.exit_code == 0, result.output
    assert "drive_overlay.mp4 (20 of 20 frames)" in result.output
    assert _props(tmp_path / "p" / "drive_overlay.mp4") == (20, 12.0, 96, 64)
    assert len(list((tmp_path / "p" / "drive_masks").glob("*.png"))) == 20


def test_ctrl_c_leaves_a_playable_video_of_the_frames_done(tmp_path):
    video = _video(tmp_path / "drive.mp4")
    done = predict_video(video, tmp_path / "p", _red(stop_after=4), progress=False)
    assert done.interrupted and done.frames == 8 and done.total == 20
    assert _props(done.path) == (8, 12.0, 96, 64)
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["drive_overlay.mp4"]  # no temporary file left


def test_a_failure_mid_video_leaves_no_file(tmp_path):
    video = _video(tmp_path / "drive.mp4")
    with pytest.raises(RuntimeError, match="decoder crashed"):
        predict_video(video, tmp_path / "p", _red(stop_after=3, fail=True), progress=False)
    assert list((tmp_path / "p").iterdir()) == []


def test_an_unreadable_video_is_one_line(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video")
    result = run("predict", bad, "--out", tmp_path / "p", "-q")
    assert (
        result.exit_code == 2
        and "video" in result.output
        and "clip.mp4" in result.output
        and "Traceback" not in result.output
    )
