"""The errors a user can cause. The CLI turns them into one line and an exit code; the
Python API raises them as they are.

One rule for every command's exit code: 0 success, 1 a gate failed (evaluate's gates,
check-data's findings), 2 a usage, config or input error (every SegtoolError), 130/143
interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE = 0, 1, 2


class SegtoolError(Exception):
    """A problem the user can fix: the message names the file or key and says how."""

    exit_code = EXIT_USAGE

    def one_line(self) -> str:
        text = str(self)
        # Raised in a DataLoader worker, the error comes back with the worker's traceback
        # folded into its message; the user needs only the original last line.
        if "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if last.startswith(("segtool.", type(self).__name__)) else last
        return text


class ConfigError(SegtoolError):
    """A config file or override that does not validate."""


class DataError(SegtoolError):
    """An image, mask or list file that cannot be used as it is."""


class ImageTooLarge(DataError):
    """An image or mask above the pixel limit (SEGTOOL_MAX_PIXELS), refused before decoding."""


class CheckpointError(SegtoolError):
    """A checkpoint that is missing, torn, unsafe or does not fit the request."""


class Interrupted(SegtoolError):
    """Training stopped by a signal after saving; exit 128 + the signal number, as shells do."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class MissingExtra(SegtoolError):
    """A command or model that needs an optional part of segtool that is not installed."""


def require_train(what: str) -> None:
    """Raise MissingExtra, naming `what` needs it, unless the train extra (torch,
    torchvision, albumentations) is installed. Checked without importing them."""
    import importlib.util

    missing = [m for m in ("torch", "torchvision", "albumentations") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(
            f"{what} needs the train extra ({', '.join(missing)} not installed): pip install 'segtool[train]'"
        )
