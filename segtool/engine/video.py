"""`segtool predict drive.mp4`: an overlay video with the same frame count, frame rate and
size, and optionally one palette mask per frame. Read and written through OpenCV.

The video is written to a temporary file beside the output and moved into place when it
is closed: after the last frame, or after Ctrl-C, when it holds the frames done so far
and is still a playable file. Any other failure removes it. Torch-free, like the rest of
the ONNX Runtime path.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from segtool.engine.outputs import Predictor, colour_lut, overlay_image, png_bytes
from segtool.errors import DataError, SegtoolError
from segtool.fsutil import atomic_write_bytes

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class VideoResult:
    path: Path  # the overlay video written
    frames: int  # frames written
    total: int  # frames the input declares (0 when it does not say)
    interrupted: bool = False


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def predict_video(
    video: Path, out_dir: Path, predictor: Predictor, *, name: str | None = None, masks: bool = False,
    legend: bool = True, overwrite: bool = False, progress: bool = True,
) -> VideoResult:  # fmt: skip
    """Overlay video `<name>_overlay.mp4` (and with `masks` `<name>_masks/NNNNNN.png`)."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise DataError(f"video {video} cannot be opened (not a video, or a codec OpenCV lacks); convert it to H.264 .mp4")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    name = name or video.stem
    target = out_dir / f"{name}_overlay.mp4"
    if target.exists() and not overwrite:
        raise SegtoolError(f"{target} exists; pass --overwrite to replace it")
    mask_dir = out_dir / f"{name}_masks"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if masks:
            mask_dir.mkdir(exist_ok=True)
    except OSError as e:
        capture.release()
        raise SegtoolError(f"cannot create {mask_dir if masks else out_dir} ({e.strerror}); choose another --out") from None
    tmp = out_dir / f".{name}_overlay.tmp.mp4"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        capture.release()
        raise SegtoolError(f"cannot write {target} (OpenCV has no mp4v encoder here, or the folder is not writable)")
    lut = colour_lut(np.asarray(predictor.colours, dtype=np.uint8))
    done, interrupted = 0, False
    bar = tqdm(total=total or None, desc=f"predict {video.name}", unit="frame", disable=not progress)
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

    def write(frames: list[np.ndarray], preds: list[np.ndarray]) -> None:
        nonlocal done
        for rgb, pred in zip(frames, preds):
            blended = overlay_image(rgb, pred, lut, predictor.names if legend else None)
            writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
            if masks:
                mask = Image.fromarray(pred)
                mask.putpalette(lut.flatten().tolist())
                atomic_write_bytes(mask_dir / f"{done:06d}.png", png_bytes(mask))
            done += 1
            bar.update(1)

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
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        capture.release()
        bar.close()
    writer.release()
    if done == 0:
        tmp.unlink(missing_ok=True)
        if interrupted:
            raise KeyboardInterrupt
        raise DataError(f"video {video} has no frames OpenCV can decode; convert it to H.264 .mp4")
    os.replace(tmp, target)
    return VideoResult(target, done, total, interrupted)
