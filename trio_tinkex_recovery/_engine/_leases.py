"""The lease keeper: which runs this replica acts on, when several share a database.

With a store that holds leases (PostgreSQL), a monitor does not watch every
stored run: its `LeaseKeeper` decides.  Every third of a lease it renews
the leases it holds, gives back runs above its fair share (⌈runs / live
replicas⌉, so a replica that joins gets work), claims free runs up to that
share, and takes over every orphan (a run whose lease expired, or left
free for a third of a lease) whatever the share, so that the runs of a
replica that died are polled again at the next renewal of any other.  The
runs it gains are watched (and their pending recoveries resumed, reconciled
as after a restart); the runs it loses stop being polled at once, and a
recovery of theirs under way here is interrupted (its restore call in
flight cancelled), so that the new owner's restore is the only one.

When renewals fail it stops acting on every run, recoveries included,
before any of its leases can have expired: at the start of the last renewal
that succeeded plus the lease, less a margin.  It keeps trying, and acts
again on whatever it still holds (or claims anew) once the database
answers.  Clean shutdown gives every lease back.

Time is the keeper's ``clock`` (by default `trio.current_time`, so tests
drive it with a mock clock); lease expiry itself is the database's.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from .._errors import AlreadyPendingError
from .._failpoints import stall_point
from .._store._base import Snapshot, StoredRun, StoreError, json_safe
from .._text import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from .._state import RecoveryState
    from .._store._base import LeasingStore

__all__ = ["LeaseKeeper", "Replica"]

logger = logging.getLogger("trio_tinkex_recovery")

#: The share of a lease kept back when deciding to stop acting on a run
#: whose lease could not be renewed (clock drift, a slow last renewal).
MARGIN: Final = 0.1


class Replica(Protocol):
    """What the keeper drives: this replica's monitor, through four calls."""

    def recoveries(self) -> Mapping[str, RecoveryState]:
        """This replica's recoveries by run id (pending ones included)."""
        ...

    async def take_up(self, snapshot: Snapshot) -> None:
        """Act on the runs of ``snapshot``, as after a restart."""
        ...

    def stop_monitoring(self, run_id: str) -> None:
        """Stop polling ``run_id`` (a recovery under way goes on)."""
        ...

    def interrupt(self, run_id: str) -> None:
        """Cancel ``run_id``'s recovery under way here, if any, at once."""
        ...


class LeaseKeeper:
    """Claims, renews and gives back this replica's runs for one monitor."""

    def __init__(
        self,
        replica: Replica,
        store: LeasingStore,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._replica = replica
        self._store = store
        self._clock = clock
        self.lease = store.lease
        #: Seconds between two renewals.
        self.interval = store.lease / 3
        self._margin = store.lease * MARGIN
        # The runs this replica acts on (watches, or resumes).
        self._acting: set[str] = set()
        # Until when (keeper clock) the leases renewed last are surely ours.
        self._valid_until = -math.inf
        # When the last round began (keeper clock).
        self._last_start = -math.inf
        self._wake = trio.Event()
        self._failing = False
        #: Live replicas at the last renewal (this one included).
        self.replicas = 0
        #: Runs claimed, taken over from a replica that died, and lost.
        self.claims = 0
        self.takeovers = 0
        self.losses = 0

    def __repr__(self) -> str:
        return (
            f"<LeaseKeeper replica={self._store.replica_id} "
            f"held={len(self._store.held)} replicas={self.replicas}>"
        )

    @property
    def replica_id(self) -> str:
        """This replica's id in the database."""
        return self._store.replica_id

    @property
    def leases_held(self) -> int:
        """How many runs this replica holds a lease on."""
        return len(self._store.held)

    @property
    def acting(self) -> frozenset[str]:
        """The runs this replica acts on now."""
        return frozenset(self._acting)

    def holds(self, run_id: str) -> bool:
        """Whether this replica may act on ``run_id`` now."""
        return run_id in self._acting or (
            self._store.holds(run_id) and self._clock() < self._valid_until
        )

    async def add(self, run_id: str, metadata: Mapping[str, Any]) -> None:
        """Store a run for the replicas; one of them claims it soon.

        Raises:
            StoreError: The database cannot be written.
        """
        await self._store.put_run(StoredRun(run_id, json_safe(metadata)))
        self._wake.set()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the leases until cancelled; give them all back on the way out.

        The first round runs before ``started``: a database that cannot be
        reached then is an error of the caller's.
        """
        try:
            await self._round()
            task_status.started()
            while True:
                next_round = self._last_start + self.interval
                deadline = next_round
                if self._acting:
                    deadline = min(deadline, self._valid_until)
                with trio.move_on_at(self._trio_time(deadline)):
                    await self._wake.wait()
                self._wake = trio.Event()
                if self._acting and self._clock() >= self._valid_until:
                    self._stop_all()
                await self._round_quietly()
        finally:
            self._stop(self._acting, why=None)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self._store.release()
                except StoreError as exc:
                    logger.warning(
                        "replica %s could not give its leases back (they "
                        "expire by themselves): %s",
                        self.replica_id,
                        exc,
                    )

    # -- internals -------------------------------------------------------------

    def _trio_time(self, at: float) -> float:
        """The Trio time of ``at`` on the keeper's clock."""
        return trio.current_time() + (at - self._clock())

    async def _round_quietly(self) -> None:
        try:
            await self._round()
        except StoreError as exc:
            if not self._failing:
                logger.warning(
                    "replica %s cannot renew its leases (it stops acting on its "
                    "runs %.1f s after the last renewal): %s",
                    self.replica_id,
                    self.lease - self._margin,
                    exc,
                )
            self._failing = True
        else:
            if self._failing:
                logger.warning(
                    "replica %s renews its leases again (%d held)",
                    self.replica_id,
                    self.leases_held,
                )
            self._failing = False

    async def _round(self) -> None:
        """Renew; give back above the fair share; claim orphans and free runs."""
        started = self._last_start = self._clock()
        store = self._store
        renewal = None
        # A renewal that hangs must not keep us acting past our leases.
        with trio.move_on_at(
            self._trio_time(self._valid_until) if self._acting else math.inf
        ):
            await stall_point("renew", self.replica_id)
            renewal = await store.renew()
        if renewal is None:
            self._stop_all()
            raise StoreError(f"renewing leases in {store.location} timed out")
        self._valid_until = started + self.lease - self._margin
        self.replicas = renewal.replicas
        lost = self._acting - set(renewal.held)
        self._stop(lost, why="their leases were lost (taken over, or runs removed)")
        self.losses += len(lost)
        share = math.ceil(renewal.runs / renewal.replicas)
        excess = len(renewal.held) - share
        if excess > 0:
            spare = sorted(r for r in renewal.held if not self._busy(r))[:excess]
            if spare:
                self._stop(spare, why=None)
                await store.give_back(spare)
                logger.info(
                    "replica %s gave back %d run(s) above its share of %d "
                    "(%d replicas)",
                    self.replica_id,
                    len(spare),
                    share,
                    renewal.replicas,
                )
        # Orphans whatever the share (given back next round if above it).
        # Not a run whose recovery, begun under a lease since lost, still
        # runs here: its next fenced write ends it first.
        stale = [
            run_id
            for run_id, state in self._replica.recoveries().items()
            if state.pending and not store.holds(run_id)
        ]
        claims = await store.claim(share - len(renewal.held), exclude=stale)
        self.claims += len(claims)
        taken: dict[str, list[str]] = {}
        for claim in claims:
            if claim.previous is not None and claim.previous != self.replica_id:
                taken.setdefault(claim.previous, []).append(claim.run_id)
        for previous, run_ids in taken.items():
            self.takeovers += len(run_ids)
            logger.warning(
                "replica %s took over %d run(s) from replica %s, whose lease "
                "expired: %s",
                self.replica_id,
                len(run_ids),
                printable(previous),
                _some(run_ids),
            )
        fresh = [c.run_id for c in claims if c.previous in (None, self.replica_id)]
        if fresh:
            logger.info(
                "replica %s claimed %d run(s): %s",
                self.replica_id,
                len(fresh),
                _some(fresh),
            )
        gained = set(store.held) - self._acting
        if gained:
            await self._start(await store.runs(gained))

    def _busy(self, run_id: str) -> bool:
        """Whether a recovery of ``run_id`` is under way here (not given back)."""
        state = self._replica.recoveries().get(run_id)
        return state is not None and state.pending

    async def _start(self, snapshot: Snapshot) -> None:
        """Act on the runs of ``snapshot``: resume or watch each, as after a restart."""
        for run_id, stored in sorted(snapshot.runs.items()):
            if not self._store.holds(run_id):
                continue
            self._acting.add(run_id)
            recovery = snapshot.recoveries.get(run_id)
            one = Snapshot(
                runs={run_id: stored},
                recoveries={} if recovery is None else {run_id: recovery},
                session=snapshot.session,
                open_loads=tuple(
                    load for load in snapshot.open_loads if load.run_id == run_id
                ),
            )
            try:
                await self._replica.take_up(one)
            except AlreadyPendingError:
                pass  # still recovering here since an earlier lease
            except Exception as exc:
                # One run that cannot be taken up (a database blip, no
                # service to resume it with) never stops the others.
                self._acting.discard(run_id)
                logger.warning(
                    "replica %s cannot act on run %s: %s",
                    self.replica_id,
                    printable(run_id),
                    exc,
                )

    def _stop(self, run_ids: Collection[str], *, why: str | None) -> None:
        stopped = sorted(run_ids)
        for run_id in stopped:
            self._acting.discard(run_id)
            self._replica.stop_monitoring(run_id)
            # Fencing stops its next write, not a restore call in flight.
            self._replica.interrupt(run_id)
        if why is not None and stopped:
            logger.warning(
                "replica %s stopped acting on %d run(s), %s: %s",
                self.replica_id,
                len(stopped),
                why,
                _some(stopped),
            )

    def _stop_all(self) -> None:
        """Stop acting on every run: their leases may expire any moment now."""
        if self._acting:
            logger.warning(
                "replica %s stops acting on its %d run(s): its leases could not "
                "be renewed in time",
                self.replica_id,
                len(self._acting),
            )
        self._stop(self._acting, why=None)
        self._store.forget()


def _some(run_ids: Collection[str], shown: int = 5) -> str:
    """A few run ids for a log line: ``a, b, c and 97 more``."""
    ids = sorted(run_ids)
    text = ", ".join(printable(r) for r in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
