"""Fault injection for the crash-safety tests; inert unless SEGTOOL_FAULT is set.

`SEGTOOL_FAULT=point:n[:SIGNAL[:RANK]]` sends SIGKILL (or the named signal, e.g. SIGTERM)
to this process the n-th time `fault_point(point)` is reached, so a test can stop a run
exactly mid-step, mid-validation or mid-save and check that `--resume` still ends where
an uninterrupted run does. Under torchrun, RANK picks the one process to stop, and the
fault strikes only before the first elastic restart: the restarted group runs clean.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("SEGTOOL_FAULT", "").split(":")
_counts: dict[str, int] = {}


def _armed() -> bool:
    if len(_SPEC) > 3 and os.environ.get("RANK", "0") != _SPEC[3]:
        return False
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def fault_point(name: str) -> None:
    if _SPEC[0] != name or not _armed():
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(_SPEC[1] if len(_SPEC) > 1 else 1):
        os.kill(os.getpid(), getattr(signal, _SPEC[2] if len(_SPEC) > 2 else "SIGKILL"))
