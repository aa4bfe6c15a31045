"""Crash points: where the crash-safety tests kill a watcher.

With ``TRIO_TINKEX_RECOVERY_CRASH_AT=NAME`` in its environment, a process
kills itself with SIGKILL the first time it reaches the point ``NAME``, as
a machine failure would: no cleanup, no flush, no goodbye.  The test suite
then starts the watcher again on the same state file and counts, on the
simulator, that every corrupted run was restored exactly once.  Without the
variable (always, outside those tests) a point costs a comparison.

The points, in the order a recovery passes them: ``detected``,
``attempt-written``, ``load-written``, ``load-accepted``, ``restored``,
``outcome-written``.
"""

from __future__ import annotations

import os
import signal
from typing import Final

__all__ = ["POINTS", "crash_point"]

POINTS: Final = (
    "detected",
    "attempt-written",
    "load-written",
    "load-accepted",
    "restored",
    "outcome-written",
)

_CRASH_AT: Final = os.environ.get("TRIO_TINKEX_RECOVERY_CRASH_AT")


def crash_point(name: str) -> None:
    """Die here, at once, if this process was told to crash at ``name``."""
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)
