"""How runs enter a monitor: by name, from the journal, and as successors.

Each entry point asks the `Book` where the run stands and acts on the
answer with no ``await`` in between (the episode rule): `Intake.watch_run`
(``monitor_run``, and every run a journal or a lease hands over),
`Intake.resume` (a journal's pending recoveries and watched runs, at start
or when a lease is gained) and `Intake.follow_outcomes` (the successor of
each run restored).  Discovery (``monitor_all``) is `_discovery`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from .._errors import RecoveryDisabledError
from .._store._base import StoredRun, StoreError, json_safe
from .._text import printable
from .._types import validate_run_id
from ._watch import Watch

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._policy import Policy
    from .._protocols import ServiceProtocol
    from .._store._base import Snapshot, Store
    from ._episodes import Book
    from ._executor import Executor
    from ._leases import LeaseKeeper
    from ._routes import Routes

__all__ = ["Intake"]

logger = logging.getLogger("trio_tinkex_recovery")


class Intake:
    """The ways runs enter one monitor (see the module)."""

    def __init__(
        self,
        *,
        book: Book,
        policy: Policy,
        routes: Routes,
        executor: Executor,
        service: ServiceProtocol | None,
        store: Store | None,
        nursery: trio.Nursery,
        check_open: Callable[[], None],
        leases: Callable[[], LeaseKeeper | None],
        start_watch: Callable[[Watch], None],
    ) -> None:
        self._book = book
        self._watches = book.watches
        self._handed = book.handed
        self._successors = book.successors
        self._policy = policy
        self._routes = routes
        self._executor = executor
        self._service = service
        self._store = store
        self._nursery = nursery
        self._check_open = check_open
        self._leases = leases
        self._start_watch = start_watch

    async def watch_run(
        self,
        run_id: str,
        service: ServiceProtocol | None,
        metadata: Mapping[str, Any] | None,
        *,
        persist: bool,
    ) -> None:
        """`Monitor.monitor_run`; ``persist=False`` for a run read from the journal."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        if not self._policy.enabled:
            raise RecoveryDisabledError(
                "recovery is disabled; pass Policy(enabled=True) to opt in"
            )
        validate_run_id(run_id)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {metadata!r}")
        if service is None:
            service = self._service
        metadata = dict(metadata or {})
        self._book.stopped.pop(run_id)
        if self._settled(run_id, service, metadata):
            return
        successor = self._successors.get(run_id)
        if successor and self._policy.follow_recovered:
            if self._book.standing(successor) not in ("watched", "handed"):
                await self.watch_run(successor, service, metadata, persist=True)
            return
        if (leases := self._leases()) is not None and not leases.holds(run_id):
            # Another replica may hold it: stored for whichever claims it.
            await leases.add(run_id, metadata)
            return
        rest = await self._routes.rest_client(run_id, service)
        self._check_open()
        if persist and self._store is not None:
            await self._store.put_run(
                StoredRun(
                    run_id,
                    json_safe(metadata),
                    recovered=run_id in self._successors,
                    successor=self._successors.get(run_id),
                )
            )
            self._check_open()
        # Asked again after the awaits, and acted on with none in between:
        # the run may have been handed over or restored meanwhile.
        if self._settled(run_id, service, metadata):
            return
        if self._successors.get(run_id) and self._policy.follow_recovered:
            return  # restored meanwhile: its follow-up watches the successor
        watch = self._watches.get(run_id)
        if watch is not None:
            watch.service, watch.metadata = service, metadata
            watch.discovered = False  # named now: the user's to stop
            self._routes.bind(watch, rest)
            return
        watch = Watch(
            run_id=run_id,
            service=service,
            rest=rest,
            metadata=metadata,
            recovered=run_id in self._successors,
        )
        self._start_watch(watch)

    def _settled(
        self, run_id: str, service: ServiceProtocol | None, metadata: dict[str, Any]
    ) -> bool:
        """Whether ``run_id`` is handed over: then update what its follow-up uses."""
        handed = self._handed.get(run_id)
        if handed is None:
            return False
        handed.service = service or handed.service
        handed.metadata = metadata
        handed.followed = True
        return True

    async def follow_outcomes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Drain the executor's outcomes; watch each run this monitor recovered."""
        async with self._executor.outcomes() as outcomes:
            task_status.started()
            async for outcome in outcomes:
                watch = self._handed.pop(outcome.run_id, None)
                if watch is None or outcome.state.phase != "done":
                    continue
                successor = outcome.state.new_run_id
                self._successors.set(outcome.run_id, successor)
                self._nursery.start_soon(self._follow, watch, successor, outcome.client)

    async def _follow(self, old: Watch, successor: str | None, client: Any) -> None:
        """Record that ``old`` was restored, and watch its successor."""
        try:
            if self._store is not None:
                try:
                    await self._store.put_run(
                        StoredRun(
                            old.run_id,
                            json_safe(old.metadata),
                            recovered=True,
                            successor=successor,
                        )
                    )
                except StoreError as exc:
                    # The restored model exists whatever the journal says
                    # (a blip, a lease just lost): it is watched all the same.
                    logger.error("run %s: %s", printable(old.run_id), exc)
            if self._policy.follow_recovered and successor and old.followed:
                metadata = {**old.metadata, "training_client": client}
                metadata.pop("training_pid", None)
                await self.watch_run(successor, old.service, metadata, persist=True)
        except trio.ClosedResourceError:
            pass
        except Exception:
            logger.exception("could not follow recovered run %s", successor)

    async def resume(self, snapshot: Snapshot) -> None:
        """Pick up what a journal holds: pending recoveries, then watched runs.

        A pending recovery resumes where it stopped (its restore reconciled
        by the executor); a run restored in its current episode is not
        restored again (its successor is watched instead); a run whose
        recovery was exhausted is left alone until watched again by name.
        """
        self._executor.remember(snapshot)
        for stored in snapshot.runs.values():
            if stored.recovered:
                self._successors.set(stored.run_id, stored.successor)
        for recovery in snapshot.recoveries.values():
            if not recovery.state.pending:
                continue
            run_id = recovery.state.run_id
            rest = await self._routes.rest_client(run_id, self._service)
            self._handed[run_id] = Watch(
                run_id=run_id,
                service=self._service,
                rest=rest,
                metadata=dict(recovery.metadata),
            )
            await self._executor.resume(
                recovery, self._service, self._policy, rest=rest
            )
        for stored in snapshot.runs.values():
            record = snapshot.recoveries.get(stored.run_id)
            if record is not None and record.state.phase == "exhausted":
                logger.warning(
                    "run %s: its recovery was exhausted; watch it again by name "
                    "to retry",
                    printable(stored.run_id),
                )
                continue
            if stored.run_id not in self._handed:
                # Already in the journal: nothing to write (a restart with
                # thousands of stored runs costs no write per run).
                await self.watch_run(
                    stored.run_id, None, stored.metadata, persist=False
                )
