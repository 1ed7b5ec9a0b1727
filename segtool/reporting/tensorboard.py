"""`train.tensorboard: true`: the run's scalars and a few predictions per validation in
TensorBoard, for users who watch runs that way. TensorBoard is an optional extra
(pip install 'segtool[tensorboard]'), so a base install stays small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtool.data.io import read_image
from segtool.errors import ConfigError
from segtool.inference.outputs import colour_lut, overlay_image
from segtool.inference.torch_backend import torch_predictor

IMAGES = 4  # val images shown per validation


class TensorBoardLog:
    """Writes `<run>/tensorboard/`: train/loss, train/lr, val/miou, val/pixel_accuracy and
    val/iou/<class> per epoch, and overlays of the first IMAGES val images."""

    def __init__(self, out_dir: Path, writer: Any = None):
        """`writer`: anything with SummaryWriter's add_scalar, add_image, flush and close
        (tests pass their own); None opens `<out_dir>/tensorboard/`."""
        self.writer = writer if writer is not None else self.writer_class()(log_dir=str(out_dir / "tensorboard"))
        self._images: list[np.ndarray] | None = None  # the val images shown, read once

    @staticmethod
    def writer_class():
        """torch's SummaryWriter; a one-line error, before anything is written, without TensorBoard."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard: true needs TensorBoard: pip install 'segtool[tensorboard]'") from None
        return SummaryWriter

    def log(
        self,
        row: dict[str, Any],
        report: dict[str, Any] | None,
        model: torch.nn.Module,
        cfg,
        pairs,
        device,
        calibration_offsets: list[float] | None = None,
    ) -> None:
        """One epoch's row; with a validation in it, also the overlays, decided as that
        validation decided (`calibration_offsets`: the ones it chose, if any)."""
        epoch = row["epoch"]
        self.writer.add_scalar("train/loss", row["train_loss"], epoch)
        self.writer.add_scalar("train/lr", float(row["lr"]), epoch)
        if report is None or "val_miou" not in row:
            return
        self.writer.add_scalar("val/miou", report["miou"] or 0.0, epoch)
        self.writer.add_scalar("val/pixel_accuracy", report["pixel_accuracy"] or 0.0, epoch)
        for c in report["per_class"]:
            if c["iou"] is not None:
                self.writer.add_scalar(f"val/iou/{c['class']}", c["iou"], epoch)
        d = cfg.data
        if self._images is None:
            self._images = [read_image(img) for img, _ in pairs[:IMAGES]]
        images = self._images
        was_training = model.training
        model.eval()
        offsets = [] if calibration_offsets is None else [np.asarray(calibration_offsets, np.float32)]
        maps = torch_predictor(model, cfg, device).predict_maps(images, offsets=offsets)
        preds = [m.offset_classes[0] if offsets else m.classes for m in maps]
        model.train(was_training)
        lut = colour_lut(np.asarray([c.color for c in d.classes], np.uint8))
        names = [c.name for c in d.classes]
        for i, (image, pred) in enumerate(zip(images, preds)):
            self.writer.add_image(
                f"val/prediction_{i}", overlay_image(image, pred, lut, names), epoch, dataformats="HWC"
            )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
