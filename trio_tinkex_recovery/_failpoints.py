"""Crash points and stall points: where the tests kill or wedge a watcher.

With ``TRIO_TINKEX_RECOVERY_CRASH_AT=NAME`` in its environment, a process
kills itself with SIGKILL the first time it reaches the point ``NAME``, as
a machine failure would: no cleanup, no flush, no goodbye.  The test suite
then starts the watcher again on the same state file and counts, on the
simulator, that every corrupted run was restored exactly once.  Without the
variable (always, outside those tests) a point costs a comparison.

The points, in the order a recovery passes them: ``detected``,
``attempt-written``, ``load-written``, ``load-accepted``, ``restored``,
``outcome-written``.

With ``TRIO_TINKEX_RECOVERY_STALL_AT=NAME`` (or ``NAME@WHO``, several
comma-separated), a task reaching the stall point ``NAME`` (of ``WHO``)
waits there, as on a server that stopped answering, until it is cancelled
or the variable no longer names it.  The variable is read at each pass, so
a test can wedge one replica's lease renewals (``renew@REPLICA_ID``) while
it runs.  The points: ``renew`` (a lease renewal, before it is sent).
"""

from __future__ import annotations

import os
import signal
from typing import Final

import trio

__all__ = ["POINTS", "STALL_POINTS", "crash_point", "stall_point"]

POINTS: Final = (
    "detected",
    "attempt-written",
    "load-written",
    "load-accepted",
    "restored",
    "outcome-written",
)

STALL_POINTS: Final = ("renew",)

_CRASH_AT: Final = os.environ.get("TRIO_TINKEX_RECOVERY_CRASH_AT")
_STALL_AT: Final = "TRIO_TINKEX_RECOVERY_STALL_AT"
#: How often a stalled task looks whether its stall is over.
_STALL_CHECK: Final = 0.05


def crash_point(name: str) -> None:
    """Die here, at once, if this process was told to crash at ``name``."""
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _stalled(name: str, who: str) -> bool:
    points = os.environ.get(_STALL_AT)
    if not points:
        return False
    named = {point.strip() for point in points.split(",")}
    return name in named or f"{name}@{who}" in named


async def stall_point(name: str, who: str = "") -> None:
    """Wait here while this process is told to stall at ``name`` (of ``who``).

    Returns at once, without a checkpoint, when it is not (always, outside
    those tests).
    """
    # An environment variable cannot set an Event: look again now and then.
    while _stalled(name, who):  # noqa: ASYNC110
        await trio.sleep(_STALL_CHECK)
