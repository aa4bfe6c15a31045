"""One run's recovery record: the executor's state machine, and what the journal keeps.

::

    queued ──> attempting ──> done
                  │  ^
                  v  │
                waiting ──> exhausted      (any pending phase) ──> interrupted

``interrupted`` means cut short by cancellation; a journal keeps the last
pending record instead, so a restarted watcher resumes it.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import attrs

__all__ = ["RecoveryPhase", "RecoveryState"]

RecoveryPhase: TypeAlias = Literal[
    "queued", "attempting", "waiting", "done", "exhausted", "interrupted"
]
_PENDING: Final = frozenset({"queued", "attempting", "waiting"})


@attrs.frozen
class RecoveryState:
    """Where one run's recovery stands.  One record per run, replaced whole."""

    #: The run being recovered.
    run_id: str
    #: ``queued``, ``attempting``, ``waiting`` (to retry), ``done``,
    #: ``exhausted`` (gave up) or ``interrupted`` (cut short by cancellation).
    phase: RecoveryPhase
    #: Attempts started so far.
    attempt: int = 0
    #: The checkpoint tried last (``tinker://`` path).
    checkpoint: str | None = None
    #: When the next attempt starts (Trio time), while ``waiting``.
    retry_at: float | None = None
    #: The run the recovery created, once ``done``.
    new_run_id: str | None = None
    #: The last failure, as ``Type: message``.
    error: str | None = None

    @property
    def pending(self) -> bool:
        """Whether the recovery is queued, attempting or waiting to retry."""
        return self.phase in _PENDING
