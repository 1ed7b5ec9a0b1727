"""segtool: semantic segmentation from a folder of images and masks, on a laptop CPU.

    import segtool
    model = segtool.load("camvid")
    result = model.predict("street.png")

See segtool.api for the whole API. Importing segtool loads no torch.
"""

__version__ = "0.1.0"

from segtool.api import ClassInfo, Model, Prediction, Run, export, load, train  # noqa: E402
from segtool.errors import CheckpointError, ConfigError, DataError, MissingExtra, SegtoolError  # noqa: E402

__all__ = [
    "CheckpointError",
    "ClassInfo",
    "ConfigError",
    "DataError",
    "MissingExtra",
    "Model",
    "Prediction",
    "Run",
    "SegtoolError",
    "__version__",
    "export",
    "load",
    "train",
]
