"""The monitor: one cancellable polling task per watched run.

`open_monitor` owns a nursery.  `Monitor.monitor_run` starts a task for the
run inside its own `trio.CancelScope`; `Monitor.stop_monitoring` cancels that
scope.  Polls follow a drift-free schedule (``trio.sleep_until``) so a slow
poll never shifts the next one.  A corrupted run is handed to the executor
synchronously and its task ends.

A run read through a REST client that can list runs asks that client's
`Batcher` (``_polling``) when it falls due, which answers many runs with
one page of the run list; `Monitor.monitor_all` discovers runs through the
same pages.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, final

import attrs
import trio

from .._errors import AlreadyPendingError, RecoveryDisabledError
from .._policy import Policy
from .._protocols import ListingRestClientProtocol
from .._secrets import configured_key, registered
from .._store._base import (
    LeasingStore,
    Snapshot,
    Store,
    StoredRun,
    StoreError,
    json_safe,
)
from .._text import printable
from .._util import NoPublicConstructor
from ._backends import BACKENDS
from ._discovery import Discoverer, check_options
from ._episodes import Book
from ._executors import check_max_concurrent, new_executor
from ._intake import Intake
from ._leases import LeaseKeeper
from ._poller import Poller
from ._polling import (
    MAX_LIST_PAGES,
    Discovery,
    PollCounts,
    PollingMode,
    check_max_list_pages,
    check_polling,
)
from ._routes import Routes
from ._telemetry import Statistics, Telemetry, TelemetryEvent
from ._training import Training, open_training
from ._watch import AllRuns, Watch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from .._config import Config
    from .._protocols import RestClientFactory, RestClientProtocol, ServiceProtocol
    from .._state import RecoveryState
    from .._types import Checkpoint, TrainingRun
    from ._executor import Executor
    from ._recovery import RecoveryOutcome
    from ._training import Tracker

__all__ = ["Monitor", "open_monitor"]

logger = logging.getLogger("trio_tinkex_recovery")


@final
class Monitor(metaclass=NoPublicConstructor):
    """Watches runs and hands corrupted ones to an executor.

    Made by `open_monitor`; it has no public constructor.
    """

    _factory_hint = "use open_monitor()"

    def __init__(
        self,
        *,
        policy: Policy,
        service: ServiceProtocol | None,
        rest: RestClientProtocol | None,
        rest_for_service: RestClientFactory | None,
        executor: Executor,
        owns_executor: bool,
        telemetry: Telemetry,
        nursery: trio.Nursery,
        rng: random.Random,
        store: Store | None = None,
        polling: PollingMode = "auto",
        max_list_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self._policy = policy
        self._store = store
        self._service = service
        self._executor = executor
        self._owns_executor = owns_executor
        self._telemetry = telemetry
        self._nursery = nursery
        self._rng = rng
        self._closed = False
        # Where each run stands: every entry point asks it, then acts with
        # no await in between (the episode rule).
        self._book = Book()
        self._watches = self._book.watches
        self._handed = self._book.handed
        self._successors = self._book.successors
        self._counts = PollCounts()
        self._routes = Routes(
            rest=rest,
            rest_for_service=rest_for_service,
            polling=polling,
            interval=policy.poll_interval,
            nursery=nursery,
            counts=self._counts,
            max_list_pages=max_list_pages,
        )
        # With replicas sharing the store: which runs this one acts on.
        self._leases: LeaseKeeper | None = None
        self._poller = Poller(
            policy=policy,
            rng=rng,
            telemetry=telemetry,
            counts=self._counts,
            is_current=self._current,
            episode_over=self._episode_over,
            hand_over=self._hand_over,
            gone=self._gone,
            observe=self._observe,
        )
        # Trainings told about their run's polls and detections.
        self._trackers: dict[str, Tracker] = {}
        self._intake = Intake(
            book=self._book,
            policy=policy,
            routes=self._routes,
            executor=executor,
            service=service,
            store=store,
            nursery=nursery,
            check_open=self._check_open,
            leases=lambda: self._leases,
            start_watch=self._start_watch,
        )
        self._discoverer = Discoverer(
            book=self._book,
            executor=executor,
            service=service,
            nursery=nursery,
            closed=lambda: self._closed,
            leases=lambda: self._leases,
            start_watch=self._start_watch,
            record=None if store is None else self._put_run,
        )

    def __repr__(self) -> str:
        return f"<Monitor monitored={len(self._watches)} policy={self._policy!r}>"

    @property
    def policy(self) -> Policy:
        """The recovery policy in force."""
        return self._policy

    @property
    def executor(self) -> Executor:
        """The executor corrupted runs are handed to."""
        return self._executor

    @property
    def monitored_runs(self) -> frozenset[str]:
        """The runs being polled now."""
        return frozenset(self._watches)

    async def monitor_run(
        self,
        run_id: str,
        service: ServiceProtocol | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Start watching ``run_id`` (its first poll comes within the jitter).

        The first poll comes after a random delay of up to
        ``policy.jitter * policy.poll_interval`` (3 s with the defaults; at
        once with ``jitter=0``), then one every ``poll_interval``.

        Watching a run that is already watched updates its service and
        metadata; there is still one polling task.  A run is restored at
        most once per corruption episode (from the first poll that sees it
        corrupted until one sees it healthy again): watching a run whose
        recovery is pending only updates what its follow-up will use, and
        watching a run already restored in this episode watches its
        successor instead (with ``follow_recovered``) or polls it without
        restoring it again.

        Args:
            run_id: The run to watch.
            service: Restores the run if it breaks, and (unless the monitor
                has ``rest=``) gives the REST client that polls it; defaults
                to the monitor's ``service``.
            metadata: Merged into every event of the run; a
                ``training_client`` entry is the ``old`` argument of
                ``on_recovery``.

        Raises:
            RecoveryDisabledError: The policy is not enabled; nothing is scheduled.
            ValueError: ``run_id`` is not a valid run id, or there is no
                service to poll it with.  Nothing was sent.
            trio.ClosedResourceError: The monitor's block has exited.
            Exception: Whatever ``rest_for_service`` raised; nothing is scheduled.
        """
        await self._intake.watch_run(run_id, service, metadata, persist=True)

    async def monitor_all(
        self,
        *,
        scope: Literal["owned", "accessible"] = "owned",
        project_id: str | None = None,
        active_within: float = 86400.0,
        recover_existing: bool = False,
    ) -> None:
        """Watch every run the key can see that is training, and each new one.

        Lists the runs now (every page) and watches each that handled a
        request within the last ``active_within`` seconds; then lists them
        again once per ``poll_interval`` (the same pages poll the watched
        runs) and watches each new one as it appears.  A run already
        corrupted when first listed is reported (logged, counted in
        ``statistics().existing_corrupted``) and watched, but not restored
        in that corruption episode unless ``recover_existing``: discovery
        never restores a fleet of old broken runs at once.  A run stopped
        with `stop_monitoring` is not discovered again.  Calling it again
        replaces the options.

        Args:
            scope: ``"owned"`` (the key's own runs) or ``"accessible"``.
            project_id: Only the runs of this project.
            active_within: Seconds; runs idle for longer (by their
                ``last_request_time``, the service's wall clock) are left
                out until they are active again.  ``math.inf`` (or any
                span reaching back before the first date): every run.  A
                first listing whose runs are all idle says so in the log.
            recover_existing: Restore runs found already corrupted too.

        Raises:
            RecoveryDisabledError: The policy is not enabled.
            TypeError: The REST client cannot list runs.
            ValueError: A bad option, or no REST client to list with.
            TinkerAPIError: Listing failed (``NotFoundError`` when the
                service has no list endpoint); nothing is watched.
            trio.ClosedResourceError: The monitor's block has exited.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        if not self._policy.enabled:
            raise RecoveryDisabledError(
                "recovery is disabled; pass Policy(enabled=True) to opt in"
            )
        within = check_options(
            scope=scope,
            project_id=project_id,
            active_within=active_within,
            recover_existing=recover_existing,
        )
        rest = await self._routes.rest_client(None, self._service)
        self._check_open()
        if not isinstance(rest, ListingRestClientProtocol):
            raise TypeError(
                f"monitor_all needs a REST client that can list runs "
                f"(list_training_runs); {rest!r} cannot"
            )
        batcher = self._routes.batcher(rest, discovering=True)
        assert batcher is not None
        if batcher.unsupported is not None:
            raise batcher.unsupported
        found = self._discoverer
        wanted = AllRuns(
            batcher,
            Discovery(scope=scope, project_id=project_id, on_listed=found.on_listed),
            active_within=within,
            recover_existing=recover_existing,
        )
        previous, found.wanted = found.wanted, wanted
        discovery = batcher.discover(wanted.discovery)
        await discovery.done.wait()
        if discovery.error is not None:
            found.wanted = previous
            raise discovery.error
        wanted.say_if_idle(len(self._watches))
        batcher.keep_discovering(wanted.discovery)

    def stop_monitoring(self, run_id: str) -> None:
        """Stop watching ``run_id``; no event about its polling follows.

        A recovery already handed to the executor goes on, but its restored
        successor is not watched.  Discovery (`monitor_all`) leaves the run
        be (the 10,000 most recent stops are remembered) until it is
        watched again by name.  Unknown runs are ignored.
        """
        watch = self._watches.pop(run_id, None)
        self._book.stopped.set(run_id, None)
        handed = self._handed.get(run_id)
        if handed is not None:
            handed.followed = False
        if watch is not None:
            self._poller.unwatched(watch)
            watch.scope.cancel()

    def statistics(self) -> Statistics:
        """Counters of polls, detections, recoveries and dropped events."""
        counts = self._telemetry.counts
        executor = self._executor.statistics()
        own_dropped = self._telemetry.dropped
        return attrs.evolve(
            executor,
            monitored=len(self._watches),
            polls=self._counts.polls,
            polled=counts["polled"],
            poll_errors=counts["poll_error"],
            get_requests=self._counts.gets,
            list_requests=self._counts.lists,
            list_lies=self._counts.lies,
            existing_corrupted=self._discoverer.existing_corrupted,
            detected=counts["detected"],
            leases_held=0 if self._leases is None else self._leases.leases_held,
            replicas=0 if self._leases is None else self._leases.replicas,
            stalled=self._poller.stalled_runs,
            stalls=counts["stalled"],
            dropped_events=own_dropped
            if self._owns_executor
            else own_dropped + executor.dropped_events,
        )

    def training(
        self,
        client_or_run_id: Any,
        *,
        first_step: int = 1,
        step_of: Callable[[Checkpoint], int] | None = None,
        retries: int = 2,
    ) -> AbstractAsyncContextManager[Training]:
        """Carry a training loop in this program through the run's recoveries.

        Watches the run (and each run restored from it) for the duration of
        the ``async with`` block and yields a `Training`::

            async with monitor.training(client) as training:
                while training.next_step <= steps:
                    async with training.step() as step:
                        await train(step.client, step.number)

        The guarantee: every step from ``first_step`` on completes exactly
        once on the final lineage of runs.  A detection cancels the step in
        flight (no request reaches the old client after it); when the
        recovery completes, the loop goes on from the restored checkpoint's
        step + 1 on the new client, so the steps after that checkpoint are
        done again, once each, and none is skipped.

        Args:
            client_or_run_id: The training client (its ``model_id`` is the
                run) or a run id (``training.client`` is then ``None`` until
                a recovery gives one).
            first_step: The number of the first step.
            step_of: The last step a restored checkpoint holds; by default
                its ``user_metadata["step"]`` (save checkpoints with it).
            retries: Times in a row a step that raised a Tinker error while
                the run stayed healthy is tried again before the error
                propagates.

        Raises:
            TypeError: Neither a run id nor a client with a ``model_id``.
            ValueError: A bad ``retries``.
            RecoveryFailedError: From `Training.step`, once a recovery was
                exhausted or its checkpoint says no step.
        """
        return open_training(
            _TrainingHost(self),
            client_or_run_id,
            first_step=first_step,
            step_of=step_of,
            retries=retries,
        )

    def subscribe(
        self, max_buffer: int = 1024
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[TelemetryEvent]]:
        """Receive events while the ``async with`` block runs.

        With the monitor's own executor this includes every recovery event.
        The buffer holds ``max_buffer`` events; past that, events are dropped
        and counted (``statistics().dropped_events``), never waited for.
        """
        return self._telemetry.subscribe(max_buffer)

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the monitor's async with block has exited")

    def _start_watch(
        self, watch: Watch, first: Mapping[str, Any] | None = None
    ) -> None:
        self._routes.bind(watch, watch.rest)
        self._watches[watch.run_id] = watch
        self._nursery.start_soon(self._watch, watch, first)

    def _current(self, watch: Watch) -> bool:
        return self._watches.get(watch.run_id) is watch

    async def _watch(self, watch: Watch, first: Mapping[str, Any] | None) -> None:
        with watch.scope:
            try:
                await self._poller.poll_forever(watch, first)
            finally:
                if self._current(watch):
                    del self._watches[watch.run_id]
                self._poller.unwatched(watch)
                if watch.batcher is not None:
                    watch.batcher.members -= 1
                    watch.batcher = None

    def _episode_over(self, watch: Watch) -> None:
        """A healthy poll ended ``watch``'s corruption episode: record it."""
        self._successors.pop(watch.run_id)
        if self._store is not None:
            self._nursery.start_soon(
                self._put_run, StoredRun(watch.run_id, json_safe(watch.metadata))
            )

    async def _put_run(self, run: StoredRun) -> None:
        """Record a run in the background; a failure is logged, not raised."""
        assert self._store is not None
        try:
            await self._store.put_run(run)
        except StoreError as exc:
            logger.error("run %s: %s", printable(run.run_id), exc)

    async def _hand_over(self, watch: Watch, run: TrainingRun) -> bool:
        run_id = watch.run_id
        tracker = self._trackers.get(run_id)
        if tracker is not None:
            tracker.detected()
        try:
            await self._executor.recover(
                run_id,
                watch.service,
                self._policy,
                metadata=watch.metadata,
                last_checkpoint=run.last_checkpoint,
                run=run,
                rest=watch.rest,
            )
        except AlreadyPendingError:
            # Handed over by someone else sharing the executor: its outcome
            # is followed all the same.
            pass
        except (
            ValueError,
            TypeError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as exc:
            logger.error(
                "run %s is corrupted but could not be handed over: %s", run_id, exc
            )
            return False
        if self._current(watch):
            del self._watches[run_id]
        self._handed[run_id] = watch
        return True

    def _observe(self, watch: Watch, corrupted: bool, began: float) -> None:
        tracker = self._trackers.get(watch.run_id)
        if tracker is not None:
            tracker.polled(corrupted, began)

    def _gone(self, watch: Watch) -> None:
        """A discovered run the service no longer knows: forget it."""
        logger.warning(
            "run %s is no longer known to the service: not watching it any more",
            printable(watch.run_id),
        )
        if self._current(watch):
            del self._watches[watch.run_id]


@final
@attrs.frozen
class _TrainingHost:
    """The monitor as a training uses it."""

    _monitor: Monitor

    async def watch(self, run_id: str, metadata: Mapping[str, Any]) -> None:
        await self._monitor.monitor_run(run_id, metadata=metadata)

    def track(self, run_id: str, tracker: Tracker) -> Callable[[], None]:
        trackers = self._monitor._trackers
        trackers[run_id] = tracker

        def untrack() -> None:
            if trackers.get(run_id) is tracker:
                del trackers[run_id]

        return untrack

    def recovery_outcomes(
        self,
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[RecoveryOutcome]]:
        return self._monitor.executor.outcomes()

    async def start(self, task: Callable[..., Awaitable[None]]) -> None:
        await self._monitor._nursery.start(task)


@final
@attrs.frozen
class _Replica:
    """The monitor as its lease keeper drives it."""

    _monitor: Monitor

    def recoveries(self) -> Mapping[str, RecoveryState]:
        return self._monitor.executor.recoveries

    async def take_up(self, snapshot: Snapshot) -> None:
        await self._monitor._intake.resume(snapshot)

    def stop_monitoring(self, run_id: str) -> None:
        self._monitor.stop_monitoring(run_id)

    def interrupt(self, run_id: str) -> None:
        self._monitor.executor.interrupt(run_id)


@asynccontextmanager
async def open_monitor(
    *,
    policy: Policy | None = None,
    config: Config | None = None,
    service: ServiceProtocol | None = None,
    rest: RestClientProtocol | None = None,
    rest_for_service: RestClientFactory | None = None,
    executor: Executor | None = None,
    max_concurrent: int = 1,
    store: Store | str | os.PathLike[str] | None = None,
    polling: PollingMode = "auto",
    max_list_pages: int = MAX_LIST_PAGES,
) -> AsyncIterator[Monitor]:
    """Watch runs for the duration of the ``async with`` block.

    Args:
        policy: How to recover; defaults to ``config.recovery``, else a
            disabled `Policy` (recovery is opt-in).
        config: Where and how to reach Tinker.  With neither ``service`` nor
            ``rest``, the monitor opens its own native client from it
            (`open_service_client`) and closes it on the way out; with no
            ``config`` either, it does the same from ``Config.from_env()``
            when ``TINKER_API_KEY`` is set (as the official SDK's
            ``ServiceClient()`` does).
        service: The default service for runs that name none.
        rest: Polls every run; by default each run is polled through
            ``rest_for_service(service)``.
        rest_for_service: Turns a service into its REST client (sync or
            async); default ``service.create_rest_client()``.
        executor: Where corrupted runs go; by default the monitor runs its
            own (with ``max_concurrent`` and ``rest``) in its nursery and
            forwards its events to the monitor's subscribers.
        max_concurrent: Attempts at once for the monitor's own executor.
        store: The journal (a `Store`, or a path opened with `open_store`
            and closed on the way out).  Every watched run, recovery and
            restore is written there before it acts, and on entry the
            monitor resumes what the journal holds: it watches every stored
            run again and resumes pending recoveries where they stopped,
            never restoring a run twice in one corruption episode.
            ``None`` keeps everything in memory.
        polling: How runs read through a REST client that can list runs
            (``list_training_runs``) are polled.  ``"each"``: one GET per
            run per poll.  ``"list"``: the polls that fall due together are
            answered by pages of the run list (``GET /api/v1/training_runs``,
            100 runs a page), and a run the pages missed gets its own GET in
            the same cycle.  ``"auto"`` (the default): per cycle, whichever
            of the two needs fewer requests.  When coalescing, a run's polls
            after the first follow a schedule shared by the client's runs,
            never later than its own.  A service without the list endpoint
            is polled ``"each"`` from then on (logged once).  Other clients
            are always polled ``"each"``.
        max_list_pages: The most pages one sweep of the run list reads
            beyond those the watched runs fill (⌈watched / 100⌉); default
            1,000 (100,000 runs).  A sweep also ends at the first empty
            page and at the first page listing no run it had not seen: a
            list claiming more runs than it holds costs a few requests a
            sweep, is logged once and counted in ``statistics().list_lies``.

    Raises:
        StoreError: The journal cannot be opened (locked by another
            watcher, corrupt, from a newer version, unwritable).
        ValueError: A bad ``polling``, ``max_concurrent`` or ``max_list_pages``.

    Leaving the block cancels every polling task and recovery in flight.
    A crash of the monitor's own machinery (a bug, not a failed poll or
    recovery) surfaces as an `ExceptionGroup` from the ``async with``.
    """
    if policy is None:
        policy = config.recovery if config is not None and config.recovery else Policy()
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a Policy, got {policy!r}")
    telemetry = Telemetry()
    rng = random.Random()
    owns_executor = executor is None
    if owns_executor:
        # Checked before any nursery opens, so a bad value is a plain error.
        check_max_concurrent(max_concurrent)
    polling = check_polling(polling)
    max_list_pages = check_max_list_pages(max_list_pages)
    async with AsyncExitStack() as stack:
        stack.enter_context(
            registered(configured_key(config.api_key if config else None))
        )
        if store is not None and not isinstance(store, Store):
            assert BACKENDS.open_store is not None, "imported without its top"
            store = await stack.enter_async_context(BACKENDS.open_store(store))
        if (
            service is None
            and rest is None
            and (config is not None or os.environ.get("TINKER_API_KEY"))
        ):
            # With neither, the environment says where (as the SDK's does).
            assert BACKENDS.open_service is not None, "imported without its top"
            service = await stack.enter_async_context(BACKENDS.open_service(config))
        nursery = await stack.enter_async_context(trio.open_nursery())
        if executor is None:
            executor = new_executor(
                rest=rest,
                service=service,
                max_concurrent=max_concurrent,
                telemetry=telemetry,
                rng=rng,
                journal=store,
            )
            await nursery.start(executor.run)
        monitor = Monitor._create(
            policy=policy,
            service=service,
            rest=rest,
            rest_for_service=rest_for_service,
            executor=executor,
            owns_executor=owns_executor,
            telemetry=telemetry,
            nursery=nursery,
            rng=rng,
            store=store,
            polling=polling,
            max_list_pages=max_list_pages,
        )
        await nursery.start(monitor._intake.follow_outcomes)
        if isinstance(store, LeasingStore) and not store.readonly:
            # Replicas share the store: act only on the runs this one claims.
            monitor._leases = LeaseKeeper(_Replica(monitor), store)
            await nursery.start(monitor._leases.run)
        elif store is not None:
            await monitor._intake.resume(await store.load())
        try:
            yield monitor
        finally:
            monitor._closed = True
            nursery.cancel_scope.cancel()
