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

_counts: dict[str, int] = {}


def _armed(spec: list[str]) -> bool:
    if len(spec) > 3 and os.environ.get("RANK", "0") != spec[3]:
        return False
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def fault_point(name: str) -> None:
    # The environment is read here, not at import: a dictionary lookup per call.
    spec = os.environ.get("SEGTOOL_FAULT", "").split(":")
    if spec[0] != name or not _armed(spec):
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(spec[1] if len(spec) > 1 else 1):
        os.kill(os.getpid(), getattr(signal, spec[2] if len(spec) > 2 else "SIGKILL"))
