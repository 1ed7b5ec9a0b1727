"""The errors a user can cause. The CLI turns them into one line and an exit code."""

from __future__ import annotations


class SegtoolError(Exception):
    """A problem the user can fix: the message names the file or key and says how."""

    exit_code = 1

    def one_line(self) -> str:
        text = str(self)
        # Raised in a DataLoader worker, the error comes back with the worker's traceback
        # folded into its message; the user needs only the original last line.
        if "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if last.startswith(("segtool.", type(self).__name__)) else last
        return text


class ConfigError(SegtoolError):
    """A config file or override that does not validate (usage error, exit code 2)."""

    exit_code = 2


class DataError(SegtoolError):
    """An image, mask or list file that cannot be used as it is."""


class CheckpointError(SegtoolError):
    """A checkpoint that is missing, torn, unsafe or does not fit the request."""


class Interrupted(SegtoolError):
    """Training stopped by a signal after saving; exit 128 + the signal number, as shells do."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
