"""Nothing silently wrong, round three: a full disk, Ctrl-C's frame count, files segtool
did not write, over-long and non-UTF-8 names, and files in a folder that are not images."""

import os
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import red_predictor, run, save_png
from segtool.inference import video as video_module
from segtool.inference.outputs import mask_source, predict_files
from segtool.inference.video import predict_video

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "shapes_1.png"


def _video(path, frames=20, size=(96, 64), noise=False):
    made = path.with_name("made.mp4")  # OpenCV takes UTF-8 names only (a non-UTF-8 one crashes it)
    writer = cv2.VideoWriter(str(made), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        if noise:  # does not compress: fills a small disk after a frame or two
            frame = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        else:
            frame = np.zeros((size[1], size[0], 3), np.uint8)
            frame[:, : (i * 4) % size[0] + 8] = (40, 40, 220)
        writer.write(frame)
    writer.release()
    os.replace(made, path)
    return path


def _decoded_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def _one_error_line(output):
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def full_disk(tmp_path):
    """A real 200 KiB tmpfs: the disk fills after a frame or two of a noisy video."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# 1. A full disk


@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("early", [True, False], ids=["free-space-watched", "file-checked-only"])
def test_a_video_written_to_a_full_disk_is_one_error_and_leaves_nothing(tmp_path, full_disk, masks, early, monkeypatch):
    # not early: as if the file system said nothing of its free space: the written file's check,
    # or the mask's write, must catch it
    if not early:
        monkeypatch.setattr(video_module, "free_bytes", lambda folder: None)
    video = _video(tmp_path / "v.mp4", frames=30, size=(480, 360), noise=True)
    result = run("predict", video, "--out", full_disk, "-q", *(["--video-masks"] if masks else []))
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert "wrote" not in result.output
    assert "v_overlay.mp4" in line or "v_masks" in line, line
    assert "space" in line and "--out" in line, line
    assert sorted(os.listdir(full_disk)) == []  # no unplayable video, no temp file, no half set of masks


def test_frames_that_never_reached_the_file_are_an_error(tmp_path, monkeypatch):
    # The encoder drops every other frame and says nothing (OpenCV only logs): the
    # finished file is checked against the frames written, not trusted.
    video = _video(tmp_path / "drive.mp4")
    real = cv2.VideoWriter

    class Lossy:
        def __init__(self, *args):
            self.inner, self.calls = real(*args), 0

        def isOpened(self):
            return self.inner.isOpened()

        def write(self, frame):
            self.calls += 1
            if self.calls % 2:
                self.inner.write(frame)

        def release(self):
            self.inner.release()

    monkeypatch.setattr(video_module.cv2, "VideoWriter", Lossy)
    with pytest.raises(video_module.SegtoolError, match=r"drive_overlay\.mp4.*10 of the 20 frames"):
        predict_video(video, tmp_path / "p", red_predictor(["dark", "red"]), progress=False)
    assert list((tmp_path / "p").iterdir()) == []


# 2. Ctrl-C: the count said is the count in the file


@pytest.mark.parametrize("masks", [False, True])
def test_ctrl_c_while_a_frame_is_encoded_reports_the_frames_in_the_file(tmp_path, monkeypatch, masks):
    video = _video(tmp_path / "drive.mp4")
    real = cv2.VideoWriter

    class CtrlCOnFrame7:
        """SIGINT lands while frame 7 is being encoded: Python raises KeyboardInterrupt as
        soon as the encoder returns, with the frame already in the file."""

        def __init__(self, *args):
            self.inner, self.calls = real(*args), 0

        def isOpened(self):
            return self.inner.isOpened()

        def write(self, frame):
            self.inner.write(frame)
            self.calls += 1
            if self.calls == 7:
                signal.raise_signal(signal.SIGINT)

        def release(self):
            self.inner.release()

    monkeypatch.setattr(video_module.cv2, "VideoWriter", CtrlCOnFrame7)
    done = predict_video(video, tmp_path / "p", red_predictor(["dark", "red"]), masks=masks, progress=False)
    assert done.interrupted and _decoded_frames(done.path) == 7
    assert done.frames == 7  # not 6
    if masks:
        assert sorted(p.name for p in (tmp_path / "p" / "drive_masks").iterdir()) == [f"{i:06d}.png" for i in range(7)]
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.is_file()) == ["drive_overlay.mp4"]


# 3. A file segtool did not write is never replaced without --overwrite


def _folder_with_a_truth_mask(tmp_path):
    folder = tmp_path / "r3"
    folder.mkdir()
    (folder / "a.png").write_bytes(EXAMPLE.read_bytes())
    Image.new("L", (8, 8), 1).save(folder / "a_mask.png")  # the user's own ground truth
    return folder


def test_a_users_own_mask_is_not_overwritten(tmp_path):
    folder = _folder_with_a_truth_mask(tmp_path)
    before = (folder / "a_mask.png").read_bytes()
    result = run("predict", folder, "--out", folder, "-q")
    assert result.exit_code == 2, result.output
    assert (folder / "a_mask.png").read_bytes() == before
    lines = [line for line in result.output.splitlines() if "a_mask.png" in line]
    assert (
        len(lines) == 1 and "a.png" in lines[0] and "segtool did not write" in lines[0] and "--overwrite" in lines[0]
    ), result.output
    assert "--out" in lines[0]
    assert sorted(os.listdir(folder)) == ["a.png", "a_mask.png"]  # nothing half-done, a_mask.png not read as an input
    # --overwrite is the user saying so
    assert run("predict", folder, "--out", folder, "-q", "--overwrite").exit_code == 0
    assert (folder / "a_mask.png").read_bytes() != before and mask_source(folder / "a_mask.png") == str(
        (folder / "a.png").resolve()
    )


def test_a_users_own_overlay_and_confidence_are_not_overwritten(tmp_path):
    photos = tmp_path / "photos"
    save_png(photos / "a.png", np.full((6, 8, 3), (255, 0, 0), np.uint8))
    save_png(photos / "b.png", np.full((6, 8, 3), (255, 0, 0), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (8, 6)).save(out / "a_overlay.jpg")  # someone's picture, no mask beside it
    save_png(out / "b_confidence.png", np.zeros((6, 8), np.uint8))
    mine = {p.name: p.read_bytes() for p in out.iterdir()}
    result = predict_files([str(photos)], out, red_predictor(), progress=False, confidence=True)
    assert sorted(name for name, _ in result.failed) == [str(photos / "a.png"), str(photos / "b.png")]
    assert all("segtool did not write" in why and "--overwrite" in why for _, why in result.failed), result.failed
    assert {p.name: p.read_bytes() for p in out.iterdir()} == mine and not result.written


def test_segtools_own_outputs_are_still_kept_or_completed(tmp_path):
    photos = tmp_path / "photos"
    save_png(photos / "a.png", np.full((6, 8, 3), (255, 0, 0), np.uint8))
    out = tmp_path / "out"
    assert len(predict_files([str(photos)], out, red_predictor(), progress=False).written) == 1
    again = predict_files([str(photos)], out, red_predictor(), progress=False)
    assert again.skipped == [photos / "a.png"] and not again.failed
    (out / "a_overlay.jpg").unlink()  # an overlay missing beside segtool's own mask is made
    assert len(predict_files([str(photos)], out, red_predictor(), progress=False).written) == 1
    # An overlay from before overlays carried a record counts as segtool's beside its mask.
    Image.new("RGB", (8, 6)).save(out / "a_overlay.jpg")
    legacy = predict_files([str(photos)], out, red_predictor(), progress=False)
    assert legacy.skipped == [photos / "a.png"] and not legacy.failed
    # With --confidence added later, the confidence map is made: the rest is segtool's.
    more = predict_files([str(photos)], out, red_predictor(), progress=False, confidence=True)
    assert len(more.written) == 1 and not more.failed and (out / "a_confidence.png").is_file()


def test_a_mask_beside_its_image_is_not_read_as_an_input(tmp_path):
    folder = _folder_with_a_truth_mask(tmp_path)
    result = run("predict", folder, "--out", tmp_path / "preds", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "preds")) == ["a_mask.png", "a_overlay.jpg"]  # no a_mask_mask.png
    assert f"1 file in {folder}/ skipped: a mask or overlay beside its image (a_mask.png)" in result.output


def test_video_masks_in_a_folder_of_files_are_not_overwritten(tmp_path):
    video = _video(tmp_path / "drive.mp4", frames=4)
    # no drive_overlay.mp4 beside them
    save_png(tmp_path / "p" / "drive_masks" / "000000.png", np.zeros((4, 4), np.uint8))
    before = (tmp_path / "p" / "drive_masks" / "000000.png").read_bytes()
    with pytest.raises(video_module.SegtoolError, match=r"drive_masks already holds files; pass --overwrite"):
        predict_video(video, tmp_path / "p", red_predictor(["dark", "red"]), masks=True, progress=False)
    assert (tmp_path / "p" / "drive_masks" / "000000.png").read_bytes() == before
    assert not (tmp_path / "p" / "drive_overlay.mp4").exists()
    done = predict_video(
        video, tmp_path / "p", red_predictor(["dark", "red"]), masks=True, progress=False, overwrite=True
    )
    assert done.frames == 4 and len(list((tmp_path / "p" / "drive_masks").iterdir())) == 4


# 4. An output name too long for the file system


def test_an_output_name_too_long_fails_that_input_alone(tmp_path):
    photos = tmp_path / "r4"
    photos.mkdir()
    long = photos / ("x" * 245 + ".png")
    for p in (photos / "a.png", long, photos / "z.png"):
        p.write_bytes(EXAMPLE.read_bytes())
    result = run("predict", photos, "--out", tmp_path / "o", "-q")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if "xxxxx" in line]
    assert len(lines) == 1 and "too long for the file system" in lines[0] and "rename" in lines[0], result.output
    assert "wrote 2 masks and overlays" in result.output and "1 failed" in result.output
    assert sorted(os.listdir(tmp_path / "o")) == ["a_mask.png", "a_overlay.jpg", "z_mask.png", "z_overlay.jpg"]


def test_a_name_the_file_system_refuses_at_write_time_fails_that_input_alone(tmp_path, monkeypatch):
    # A file system whose limit pathconf does not tell (eCryptfs: 143 bytes under a
    # reported 255): the write's ENAMETOOLONG fails that input, the others are written.
    from segtool.inference import outputs as outputs

    monkeypatch.setattr(outputs, "name_too_long", lambda folder, name: None)
    photos = tmp_path / "photos"
    for name in ("a.png", "x" * 250 + ".png", "z.png"):
        save_png(photos / name, np.full((6, 8, 3), (255, 0, 0), np.uint8))
    result = predict_files([str(photos)], tmp_path / "o", red_predictor(), progress=False)
    assert [p.name for p in result.written] == ["a_mask.png", "z_mask.png"]
    assert (
        len(result.failed) == 1
        and "x" * 250 in result.failed[0][0]
        and "too long for the file system" in result.failed[0][1]
    )


def test_a_long_name_that_fits_is_written(tmp_path):
    # 240 + len("_overlay.jpg") = 252 bytes fits in 255; the temporary file beside it must fit too.
    photo = tmp_path / ("y" * 240 + ".png")
    photo.write_bytes(EXAMPLE.read_bytes())
    result = run("predict", photo, "--out", tmp_path / "o", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "o")) == ["y" * 240 + "_mask.png", "y" * 240 + "_overlay.jpg"]


# 5. Files in a folder that are not images are counted and said


def test_files_in_a_folder_that_are_not_images_are_said(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(EXAMPLE.read_bytes())
    Image.new("RGB", (8, 8)).save(photos / "b.gif")
    _video(photos / "clip.mp4", frames=2)
    (photos / ".DS_Store").write_bytes(b"\0")  # hidden files are no one's photos: not counted
    result = run("predict", photos, "--out", tmp_path / "o", "-q")
    assert result.exit_code == 0, result.output  # every image was written
    assert f"2 files in {photos}/ skipped: not images segtool reads (.gif, .mp4); pass videos by name" in result.output
    assert "wrote 1 mask and overlay" in result.output
    api = predict_files([str(photos)], tmp_path / "o2", red_predictor(), progress=False)
    assert sorted(p.name for p in api.ignored) == ["b.gif", "clip.mp4"] and len(api.written) == 1


# 6. Non-UTF-8 file names


def test_a_non_utf8_file_name_is_predicted(tmp_path):
    folder = tmp_path / "nu"
    folder.mkdir()
    bad = Path(os.fsdecode(bytes(folder) + b"/bad\xff.png"))
    bad.write_bytes(EXAMPLE.read_bytes())
    other = Path(os.fsdecode(bytes(folder) + b"/worse\xfe.png"))
    other.write_bytes(EXAMPLE.read_bytes())
    out = tmp_path / "nuo"
    save_png(Path(os.fsdecode(bytes(out) + b"/worse\xfe_mask.png")), np.zeros((4, 4), np.uint8))  # not segtool's
    result = run("predict", folder, "--out", out)  # with the progress bar
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output  # worse\xfe.png's mask is taken
    assert "wrote 1 mask and overlay" in result.output
    # shown escaped
    assert "skipped " + str(folder) + "/worse\\xfe.png: " + str(out) + "/worse\\xfe_mask.png exists" in result.output
    mask = Path(os.fsdecode(bytes(out) + b"/bad\xff_mask.png"))
    assert mask.is_file() and Path(os.fsdecode(bytes(out) + b"/bad\xff_overlay.jpg")).is_file()
    assert mask_source(mask).endswith("bad\\xff.png")
    again = run("predict", bad, "--out", out, "-q")  # its own mask is recognised
    assert again.exit_code == 0 and "1 already there" in again.output, again.output


def test_a_non_utf8_video_name_is_predicted(tmp_path, capsys):
    video = _video(Path(os.fsdecode(bytes(tmp_path) + b"/drive\xff.mp4")), frames=4)
    done = predict_video(video, tmp_path / "p", red_predictor(["dark", "red"]), masks=True, progress=True)
    assert done.frames == 4 and done.path.is_file() and len(list((tmp_path / "p").glob("*_masks/*.png"))) == 4
    assert "drive\\xff.mp4" in capsys.readouterr().err
