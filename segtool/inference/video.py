"""`segtool predict drive.mp4`: an overlay video with the same frame count, frame rate and
size, and optionally one palette mask per frame. Read and written through OpenCV.

The video is written to a temporary file beside the output and moved into place when it
is closed: after the last frame, or after Ctrl-C, when it holds the frames done so far
and is still a playable file. Before the move the finished file is opened again and its
frames counted: OpenCV's writer reports nothing when a write fails (it only logs), so a
full disk would otherwise leave an unplayable file and a success message. Any failure
removes the temporary file and the masks of this run. Torch-free, like the rest of the
ONNX Runtime path.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from segtool.errors import DataError, SegtoolError
from segtool.fsutil import WriteError, atomic_write_bytes, commit_file, free_bytes, name_too_long, printable, shortened
from segtool.inference.outputs import VIDEO_EXTS, Predictor, colour_lut, overlay_image, png_bytes


@dataclass
class VideoResult:
    path: Path  # the overlay video written
    frames: int  # frames in the file written (counted in it, not as handed to the encoder)
    total: int  # frames the input declares (0 when it does not say)
    interrupted: bool = False


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _OpenCVNames:
    """Names OpenCV can take. OpenCV passes a path on as UTF-8 text and crashes the process
    (a segfault, not an exception) on a file name that is not UTF-8, which reaches Python
    as lone surrogates; such a path is reached through a symlink of an ASCII name in a
    private scratch folder instead, removed by `close`."""

    def __init__(self) -> None:
        self.folder: str | None = None

    def __call__(self, path: Path) -> str:
        text = str(path)
        if _utf8(text):
            return text
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="segtool-video-")
        suffix = path.suffix if _utf8(path.suffix) else ""  # OpenCV picks the container by it
        link = os.path.join(self.folder, f"{len(os.listdir(self.folder))}{suffix}")
        os.symlink(os.path.abspath(path), link)  # a link to a file not made yet is fine: writing through it makes it
        return link

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)  # removes the links, never what they point to


def _frames_in(name: str) -> int | None:
    """The frames a finished video holds, as a player sees them; None when it does not open
    or its last frame does not decode (written short: the index promises frames the file
    lacks). The index count is read, and only the last frame decoded, rather than every
    frame: decoding the whole video again would add a tenth or more to a GPU run."""
    capture = cv2.VideoCapture(name)
    try:
        if not capture.isOpened():
            return None
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if frames <= 0:
            return 0
        capture.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        return frames if capture.grab() else None
    finally:
        capture.release()


def predict_video(
    video: Path,
    out_dir: Path,
    predictor: Predictor,
    *,
    name: str | None = None,
    masks: bool = False,
    legend: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> VideoResult:
    """Overlay video `<name>_overlay.mp4` (and with `masks` `<name>_masks/NNNNNN.png`)."""
    name = name or video.stem
    target = out_dir / f"{name}_overlay.mp4"
    mask_dir = out_dir / f"{name}_masks"
    for made in (target, mask_dir) if masks else (target,):
        too_long = name_too_long(out_dir, made.name)
        if too_long:
            raise SegtoolError(
                f"cannot write {printable(made)}: the name is too long for the file system ({too_long}); "
                f"rename {printable(video.name)} to a shorter name"
            )
    if target.exists() and not overwrite:
        raise SegtoolError(f"{printable(target)} exists; pass --overwrite to replace it")
    if masks and not overwrite and mask_dir.is_dir() and any(mask_dir.iterdir()):
        # Masks with no overlay video beside them are no output of this video that we know
        # of: the README's promise, nothing replaced without --overwrite, holds for them too.
        raise SegtoolError(
            f"{printable(mask_dir)} already holds files; pass --overwrite to replace them or choose another --out"
        )
    names = _OpenCVNames()
    try:
        return _predict_video(
            video, out_dir, predictor, name, target, mask_dir if masks else None, legend, progress, names
        )
    finally:
        names.close()


def _predict_video(
    video: Path,
    out_dir: Path,
    predictor: Predictor,
    name: str,
    target: Path,
    mask_dir: Path | None,
    legend: bool,
    progress: bool,
    opencv_name: _OpenCVNames,
) -> VideoResult:
    capture = cv2.VideoCapture(opencv_name(video))
    if not capture.isOpened():
        raise DataError(
            f"video {printable(video)} cannot be opened (not a video, or a codec OpenCV lacks); "
            "convert it to H.264 .mp4"
        )
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    made_mask_dir = mask_dir is not None and not mask_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if mask_dir is not None:
            mask_dir.mkdir(exist_ok=True)
    except OSError as e:
        capture.release()
        raise SegtoolError(
            f"cannot create {printable(mask_dir or out_dir)} ({e.strerror}); choose another --out"
        ) from None
    tmp = out_dir / f".{shortened(name)}_overlay.tmp.mp4"
    tmp_name = opencv_name(tmp)
    writer = cv2.VideoWriter(tmp_name, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        capture.release()
        tmp.unlink(missing_ok=True)
        if made_mask_dir:
            try:
                mask_dir.rmdir()  # type: ignore[union-attr]
            except OSError:
                pass
        raise SegtoolError(
            f"cannot write {printable(target)} (OpenCV has no mp4v encoder here, or the folder is not writable)"
        )
    lut = colour_lut(np.asarray(predictor.colours, dtype=np.uint8))
    done, interrupted = 0, False  # done: frames the encoder has returned from
    bar = tqdm(total=total or None, desc=f"predict {printable(video.name)}", unit="frame", disable=not progress)
    hint = "free some space or choose another --out"

    def chunks():
        while True:
            frames = []
            for _ in range(predictor.batch_size):
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not frames:
                return
            yield frames

    def mask_path(i: int) -> Path:
        return mask_dir / f"{i:06d}.png"  # type: ignore[operator]

    def discard() -> None:
        """Leave nothing of this run: no temp file, no masks, no mask folder it made."""
        writer.release()
        tmp.unlink(missing_ok=True)
        if mask_dir is not None:
            for i in range(done + 1):
                mask_path(i).unlink(missing_ok=True)
            if made_mask_dir:
                try:
                    mask_dir.rmdir()
                except OSError:
                    pass

    def write(frames: list[np.ndarray], preds: list[np.ndarray]) -> None:
        nonlocal done
        for rgb, pred in zip(frames, preds):
            if mask_dir is not None:
                # The mask before its frame: Ctrl-C between the two leaves one mask more than
                # the video holds (removed below), never a frame without its mask.
                mask = Image.fromarray(pred)
                mask.putpalette(lut.flatten().tolist())
                try:
                    atomic_write_bytes(mask_path(done), png_bytes(mask))
                except WriteError as e:
                    tail = hint if e.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another --out"
                    why = f"cannot write {printable(e.path)} ({e.strerror}); {tail}"
                    raise WriteError(why, e.errno, e.path, e.strerror) from None
            blended = overlay_image(rgb, pred, lut, predictor.names if legend else None)
            writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
            done += 1
            bar.update(1)
        # OpenCV says nothing when the encoder's writes fail, so a full disk is looked for
        # after each chunk: stopping now beats finding an unplayable file hours later.
        # No free space at all means the encoder's next write, or the index written on
        # closing, cannot land (the file is checked after closing in any case).
        if free_bytes(out_dir) == 0:
            why = f"cannot write {printable(target)}: the disk is full (no space left in {printable(out_dir)}); {hint}"
            raise WriteError(why, errno.ENOSPC)

    try:
        # `streams` chunks run through the model at once (one ONNX Runtime thread each);
        # frames are written strictly in order.
        with ThreadPoolExecutor(predictor.streams) as pool:
            running: deque = deque()
            for frames in chunks():
                running.append((frames, pool.submit(predictor.predict_batch, frames)))
                while len(running) > predictor.streams:
                    frames_done, future = running.popleft()
                    write(frames_done, future.result())
            while running:
                frames_done, future = running.popleft()
                write(frames_done, future.result())
    except KeyboardInterrupt:
        interrupted = True  # close the file below: the frames so far make a playable video
    except BaseException:
        discard()
        raise
    finally:
        capture.release()
        bar.close()
    try:
        writer.release()
        if done == 0 and not interrupted:
            discard()
            raise DataError(f"video {printable(video)} has no frames OpenCV can decode; convert it to H.264 .mp4")
        # The frames said are the frames in the file. Ctrl-C can land after the encoder took
        # a frame and before it was counted: the file then holds one frame more than `done`.
        frames = _frames_in(tmp_name)
        if interrupted and done == 0 and not frames:  # Ctrl-C before the first frame: nothing to keep
            discard()
            raise KeyboardInterrupt
        if frames is None or not (done <= frames <= done + 1 if interrupted else frames == done):
            got = "does not open" if frames is None else f"holds {frames} of the {done} frames written"
            cause = "the disk is full" if free_bytes(out_dir) == 0 else "a full disk, or a write that failed"
            discard()
            raise WriteError(f"cannot write {printable(target)}: the finished video {got} ({cause}); {hint}", errno.EIO)
        if mask_dir is not None:
            for i in range(frames, done + 1):  # a mask whose frame Ctrl-C kept out of the video
                mask_path(i).unlink(missing_ok=True)
        commit_file(tmp, target)
    except BaseException:
        discard()
        raise
    return VideoResult(target, frames, total, interrupted)
