"""The evaluation report `segtool evaluate` prints and writes (--json), whichever backend
scored the model. Torch-free."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtool.errors import DataError
from segtool.reporting.gates import REPORT_VERSION


@dataclass
class EvalReport:
    """`segtool evaluate`'s result: the metrics of segtool.metrics.summarize, and what was
    scored. `to_dict` is the JSON that --json writes."""

    metrics: dict[str, Any]
    checkpoint: str
    tta: bool
    data: str
    images: int
    failed: list[dict[str, str]]
    model_sha256: str = ""
    data_id: str = ""  # the pairs' file names, hashed: the same split wherever it lives
    per_image: list[tuple[str, str, float]] = field(default_factory=list)  # (image, mask, mIoU), for --report

    def __post_init__(self) -> None:
        # A split none of whose pairs could be read scores nothing: its table would be all
        # dashes, an mIoU floor would read "0.0000 vs floor" and fail as if the model were
        # bad (exit 1), and its --json would make a baseline of nothing. It is an input
        # error, refused here, where both backends (PyTorch and ONNX Runtime) make reports.
        if self.images <= 0:
            first = next((f["error"] for f in self.failed if f.get("error")), None)
            if first is None:
                raise DataError(
                    f"no pair of {self.data} could be read; "
                    "add readable image/mask pairs or point --data at another split"
                )
            raise DataError(
                f"no pair of {self.data} could be read: {len(self.failed)} unreadable, the first: {first} "
                "(segtool check-data lists them all)"
            )

    @property
    def miou(self) -> float | None:
        return self.metrics["miou"]

    def to_dict(self) -> dict[str, Any]:
        """The --json report (format REPORT_VERSION, documented in the README)."""
        return {
            "report_version": REPORT_VERSION,
            **self.metrics,
            "model": self.checkpoint,
            "model_sha256": self.model_sha256,
            "checkpoint": self.checkpoint,
            "tta": self.tta,
            "data": self.data,
            "data_id": self.data_id,
            "images": self.images,
            "failed": self.failed,
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_id(pairs: list[tuple[Path, Path]]) -> str:
    """The same for the same split on any machine: a hash of its pairs' file names."""
    names = sorted(f"{img.name} {mask.name}" for img, mask in pairs)
    # surrogateescape: a name that is not UTF-8 hashes as its bytes instead of crashing
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def scan_entry(problem: str) -> dict[str, str]:
    """A scan problem ("val.txt:3: image ... not found; ...") as a failed entry."""
    where, _, message = problem.partition(": ")
    return {"image": where, "error": message} if message else {"image": "", "error": problem}
