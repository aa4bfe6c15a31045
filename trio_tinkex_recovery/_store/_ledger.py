"""The write-ahead side of the journal, as a restoring client sees it.

A `Journal` caches, for one process, what the store holds about side
effects: the session and the ``load_weights`` whose outcome is in doubt.
Each attempt gets a `Ledger`, through which the native client records
every side effect *before* sending it and learns, after a crash, what may
already have been sent.  Every write goes through to the store first; the
cache is updated only once the write returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._base import LoadRecord, SessionRecord, Snapshot, Store

__all__ = ["Journal", "Ledger"]


@attrs.define(eq=False)
class Journal:
    """The session and restores in doubt of one store, for this process."""

    store: Store
    session: SessionRecord | None = None
    #: ``load_weights`` records whose outcome is unknown, by key.
    in_doubt: dict[str, LoadRecord] = attrs.field(factory=dict)

    def remember(self, snapshot: Snapshot) -> None:
        """Take what a store held: its session and restores in doubt.

        Read at start, or (replicas) for the runs a replica has just
        claimed: what is known already of other runs is kept.  A restore
        in doubt whose recovery is no longer pending was settled by that
        recovery's outcome (written first): it is not in doubt.
        """
        if snapshot.session is not None:
            self.session = snapshot.session
        pending = {
            run_id for run_id, r in snapshot.recoveries.items() if r.state.pending
        }
        self.in_doubt.update(
            (load.key, load) for load in snapshot.open_loads if load.run_id in pending
        )

    def ledger(self, run_id: str, attempt: int) -> Ledger:
        """The ledger of one attempt to recover ``run_id``."""
        return Ledger(self, run_id, attempt)


@attrs.define(eq=False)
class Ledger:
    """What one restore attempt writes ahead, and finds after a crash."""

    journal: Journal
    run_id: str
    attempt: int
    #: The load that restored the run, once the client returned it.
    restored: LoadRecord | None = None

    def session(self) -> SessionRecord | None:
        """The session restores are made in (maybe only its key so far)."""
        return self.journal.session

    async def put_session(self, session: SessionRecord) -> None:
        """Record the session: its key before ``create_session``, then its id."""
        await self.journal.store.put_session(session)
        self.journal.session = session

    def next_seq(self, session_id: str) -> int:
        """The first model sequence number of ``session_id`` not yet recorded."""
        current = self.journal.session
        if current is None or current.session_id != session_id:
            return 0
        return current.next_seq

    def in_doubt(self) -> LoadRecord | None:
        """This run's ``load_weights`` that may have been sent, oldest first."""
        for load in self.journal.in_doubt.values():
            if load.run_id == self.run_id:
                return load
        return None

    async def settle(self) -> None:
        """Mark the load that restored the run completed (after the outcome)."""
        if self.restored is not None:
            await self.put_load(attrs.evolve(self.restored, outcome="completed"))

    async def put_load(self, load: LoadRecord) -> None:
        """Record a ``load_weights``: before sending, and as it settles."""
        await self.journal.store.put_load(load)
        if load.outcome is None:
            self.journal.in_doubt[load.key] = load
        else:
            self.journal.in_doubt.pop(load.key, None)
