"""One recovery: the request handed over, the outcome handed out, callbacks."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .._policy import Policy
    from .._protocols import RestClientProtocol, ServiceProtocol
    from .._state import RecoveryState
    from .._store._ledger import Ledger
    from .._types import Checkpoint, TrainingRun

__all__ = ["RecoveryOutcome", "Request", "call_back", "describe_error"]

logger = logging.getLogger("trio_tinkex_recovery")


@attrs.frozen
class RecoveryOutcome:
    """How one recovery ended, as `Executor.outcomes` hands it out."""

    #: The run's final record: phase ``done``, ``exhausted`` or ``interrupted``.
    state: RecoveryState
    #: The new training client, when ``done``.
    client: Any = None
    #: The checkpoint restored, when ``done``.
    checkpoint: Checkpoint | None = None

    @property
    def run_id(self) -> str:
        """The run that was recovered."""
        return self.state.run_id


@attrs.define(eq=False)
class Request:
    """One hand-over: a corrupted run and what its recovery uses."""

    run_id: str
    service: ServiceProtocol
    policy: Policy
    metadata: Mapping[str, Any]
    last_checkpoint: Checkpoint | None
    run: TrainingRun | None
    rest: RestClientProtocol | None
    #: Resumed from the journal: the attempt to start with, and no attempt
    #: before this Trio time.
    first_attempt: int = 1
    not_before: float | None = None
    #: The write-ahead ledger of the latest restore, with a journal.
    ledger: Ledger | None = None

    def event_metadata(self, **extra: Any) -> dict[str, Any]:
        """The run's metadata with the strategy and ``extra``, for an event."""
        return {
            **self.metadata,
            "strategy": str(self.policy.checkpoint_strategy),
            **extra,
        }


def describe_error(exc: BaseException) -> str:
    """``Type: message`` (or the type alone) for an event or a record."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def call_back(name: str, callback: Callable[..., Any], *args: Any) -> None:
    """Run a user callback, sync or async; its errors are logged, never raised."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("%s callback raised; ignored", name)
