"""Atomic file writes: a crash, kill or full disk never leaves a torn output behind."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from segtool.errors import SegtoolError
from segtool.faults import fault_point

# mkstemp creates files readable by their owner only; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Errors that belong to one file's name, not to the folder or the disk: a run over many
# files fails that file alone and goes on (every other file would fail the same way on a
# full disk or a read-only folder, so those stop the run).
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ})


class WriteError(SegtoolError):
    """A file that could not be written; `errno` says why (NAME_ERRNOS: this file's name)."""

    def __init__(self, message: str, errno_: int | None = None, path: Path | None = None, strerror: str | None = None):
        super().__init__(message)
        self.errno, self.path, self.strerror = errno_, path, strerror


def printable(text: object) -> str:
    """`text` (a path, or a message naming one) safe to print on any terminal: a file name
    that is not UTF-8 reaches Python as lone surrogates, which a strict UTF-8 stream
    refuses with UnicodeEncodeError. Such bytes are shown escaped, as `bad\\xff.png`."""
    s = str(text)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, the file system under `folder` takes (255 where it
    does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def name_too_long(folder: Path, name: str) -> str | None:
    """Why `name` cannot be created in `folder` (too many bytes for its file system), or None."""
    size, limit = len(os.fsencode(name)), name_max(folder)
    if size <= limit:
        return None
    return f"{size} bytes, at most {limit}"


def free_bytes(folder: Path) -> int | None:
    """Bytes this process can still write under `folder`; None when the system does not say.
    Root may write into the blocks reserved for it, so root counts those too."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    if st.f_blocks == 0:  # some network and FUSE file systems report no sizes at all
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def shortened(name: str, max_bytes: int = 100) -> str:
    """`name` cut to at most `max_bytes` bytes on disk, for a temp file named after its
    target: recognisable if left behind, yet never too long where the target's name just
    fits the file system's limit (the temp name adds about 14 characters)."""
    while len(os.fsencode(name)) > max_bytes:
        name = name[:-1]
    return name


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk too, or a power cut can undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _why(path: Path, e: OSError, tail: str) -> str:
    """One line for an OSError writing `path`: the cause in words, then what to do."""
    if e.errno == errno.ENAMETOOLONG:
        return f"cannot write {printable(path)}: the name is too long for the file system; use a shorter name"
    return f"cannot write {printable(path)} ({e.strerror}); {tail}"


def commit_file(tmp: Path, path: Path) -> None:
    """Move a finished temp file `tmp` (written by someone else, e.g. a video encoder) into
    place as `path`: fsync it first, so what the rename publishes is on the disk (a delayed
    allocation can also first report a full disk here), then fsync the folder."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise WriteError(_why(path, e, "choose another --out"), e.errno, path, e.strerror) from None


def atomic_write_bytes(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`.

    With `keep_previous`, the file being replaced is first renamed there, so one older
    good copy survives even a file that later turns out damaged.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{shortened(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        why = f"cannot write to {printable(path.parent)} ({e.strerror}); choose a writable output folder"
        raise WriteError(why, e.errno, path, e.strerror) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            fault_point("write")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
            fault_point("between-renames")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(_why(path, e, "the previous file, if any, is intact"), e.errno, path, e.strerror) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
