"""Discovery: watching each run ``monitor_all``'s sweeps list that is new.

The batcher's sweeps call `Discoverer.on_listed` for every listed run.  A
run is watched when it stands nowhere yet (`Book.standing`), is active
(``active_within``), has a valid id, is not recovering through a shared
executor and, with replicas, is leased by this one; a run leased by no
replica is stored once for whichever claims it.  A run found already
corrupted is watched but not restored in that episode unless
``recover_existing``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import attrs

from .._store._base import StoredRun, StoreError
from .._text import printable
from .._types import list_params, validate_run_id
from ._watch import Watch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import trio

    from .._protocols import ServiceProtocol
    from ._episodes import Book
    from ._executor import Executor
    from ._leases import LeaseKeeper
    from ._watch import AllRuns

__all__ = ["Discoverer", "check_options"]

logger = logging.getLogger("trio_tinkex_recovery")


def check_options(
    *,
    scope: object,
    project_id: object,
    active_within: object,
    recover_existing: object,
) -> float:
    """Check ``monitor_all``'s options; ``active_within`` as a float.

    An ``int`` too large for a float is ``math.inf``: no limit, as any span
    reaching back before the first date is.

    Raises:
        TypeError, ValueError: An option is bad; the message names it.
    """
    list_params(limit=1, offset=0, access_scope=scope, project_id=project_id)  # type: ignore[arg-type]
    if (
        isinstance(active_within, bool)
        or not isinstance(active_within, int | float)
        or not active_within > 0
    ):
        raise ValueError(
            f"active_within must be a number of seconds > 0, got {active_within!r}"
        )
    if not isinstance(recover_existing, bool):
        raise TypeError(f"recover_existing must be a bool, got {recover_existing!r}")
    try:
        return float(active_within)
    except OverflowError:
        return math.inf


@attrs.define(eq=False)
class Discoverer:
    """Watches the new runs a discovering sweep lists, for one monitor."""

    book: Book
    executor: Executor
    service: ServiceProtocol | None
    nursery: trio.Nursery
    #: Whether the monitor's block has exited.
    closed: Callable[[], bool]
    #: The lease keeper, with replicas (``None``: this monitor acts on all).
    leases: Callable[[], LeaseKeeper | None]
    #: Starts polling a watch, its first answer the listed entry.
    start_watch: Callable[[Watch, Mapping[str, Any]], None]
    #: Records a run in the journal, if any (errors logged, not raised).
    record: Callable[[StoredRun], Awaitable[None]] | None
    #: What ``monitor_all`` watches now (``None``: not called yet).
    wanted: AllRuns | None = None
    #: Runs found already corrupted and left unrestored.
    existing_corrupted: int = 0

    def on_listed(self, run_id: str, item: Mapping[str, Any]) -> None:
        """Watch a run a discovering sweep listed, if it is new and active."""
        wanted, book = self.wanted, self.book
        if wanted is None or self.closed() or book.standing(run_id) != "new":
            return
        if run_id in book.rejected or not wanted.note(item):
            return  # An idle run is looked at again by the next sweep.
        try:
            validate_run_id(run_id)
        except ValueError as exc:
            book.rejected.set(run_id, None)
            logger.warning("not watching a listed run: %s", printable(str(exc)))
            return
        state = self.executor.recovery_state(run_id)
        if state is not None and state.pending:
            return  # recovering through a shared executor: not ours to watch
        leases = self.leases()
        if leases is not None and not leases.holds(run_id):
            # Stored once for whichever replica claims it (never overwritten).
            if run_id not in book.offered:
                book.offered.set(run_id, None)
                self.nursery.start_soon(self._offer, leases, run_id)
            return
        watch = Watch(
            run_id=run_id,
            service=self.service,
            rest=wanted.batcher.rest,
            metadata={},
            discovered=True,
        )
        if item.get("corrupted") is True and not wanted.recover_existing:
            watch.recovered = True
            self.existing_corrupted += 1
            logger.warning(
                "run %s was already corrupted when discovered: watching it, "
                "not restoring it (recover_existing=False)",
                printable(run_id),
            )
        if self.record is not None:
            self.nursery.start_soon(
                self.record, StoredRun(run_id, {}, recovered=watch.recovered)
            )
        self.start_watch(watch, item)

    async def _offer(self, leases: LeaseKeeper, run_id: str) -> None:
        """Store a listed run for the replicas; a failure is logged, not raised."""
        try:
            await leases.add(run_id, {})
        except StoreError as exc:
            self.book.offered.pop(run_id)
            logger.error("run %s: %s", printable(run_id), exc)
