"""Pictures of a run, rewritten as it trains so they can be watched: results.png (loss,
learning rate and val mIoU against epoch), confusion_matrix.png (the last validation's,
each row normalised to the class's pixels) and per_class_iou.png.

matplotlib (its Agg backend, no display) is imported here only, and the drawing runs in
a background thread: `segtool --help`, the ONNX path and the training steps never wait
for it. Drawings start at most every MIN_INTERVAL_S seconds (a run that validates every
second would otherwise spend a core on pictures); the run's end always draws its last
state.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from segtool.fsutil import atomic_write_bytes

FILES = ("results.png", "confusion_matrix.png", "per_class_iou.png")
MIN_INTERVAL_S = 15.0


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def draw(out_dir: Path, history: list[dict[str, Any]], report: dict[str, Any] | None) -> None:
    """Write the three figures into `out_dir` (the last two need a validation report)."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, safe off the main thread

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [r["train_loss"] for r in history], color="tab:blue")
    axes[0].set(title="train loss", xlabel="epoch")
    axes[1].plot(epochs, [float(r["lr"]) for r in history], color="tab:orange")
    axes[1].set(title="learning rate (last step of the epoch)", xlabel="epoch")
    val = [(r["epoch"], 100 * r["val_miou"]) for r in history if r.get("val_miou") not in (None, "")]
    if val:
        axes[2].plot(*zip(*val), marker="o", markersize=3, color="tab:green")
    axes[2].set(title="val mIoU (%)", xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _save(fig, out_dir / FILES[0])
    if not report:
        return
    names = [c["class"] for c in report["per_class"]]
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"confusion matrix, epoch {epochs[-1] if epochs else '-'} (rows sum to 1)",
    )
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if rows[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{rows[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, out_dir / FILES[1])
    fig = Figure(figsize=(max(5.0, 0.5 * len(names) + 2), 3.6))
    ax = fig.subplots()
    ious = [100 * (c["iou"] or 0.0) for c in report["per_class"]]
    ax.bar(range(len(names)), ious, color="tab:green")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set(ylim=(0, 100), ylabel="IoU (%)", title=f"per-class IoU, mIoU {100 * (report['miou'] or 0):.1f}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out_dir / FILES[2])


class Plotter:
    """Draws in one background thread; `update` never blocks, `close` draws the latest state
    and waits for it."""

    def __init__(self, out_dir: Path, min_interval_s: float = MIN_INTERVAL_S):
        self.out_dir = out_dir
        self.min_interval_s = min_interval_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segtool-plots")
        self._lock = threading.Lock()
        self._latest: tuple[list, dict | None] | None = None  # not drawn yet
        self._started = -float("inf")
        self.error: str | None = None

    def update(self, history: list[dict[str, Any]], report: dict[str, Any] | None) -> None:
        with self._lock:
            self._latest = (list(history), report)
            due = time.monotonic() - self._started >= self.min_interval_s
            if due:
                self._started = time.monotonic()
        if due:
            self._pool.submit(self._run)

    def _run(self) -> None:
        with self._lock:
            job, self._latest = self._latest, None
        if job is None:
            return
        try:
            draw(self.out_dir, *job)
        except Exception as e:  # a picture must never stop a run
            self.error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        self._pool.submit(self._run)  # whatever came since the last drawing
        self._pool.shutdown(wait=True)
