"""The monitor: one cancellable polling task per watched run.

`open_monitor` owns a nursery.  `Monitor.monitor_run` starts a task for the
run inside its own `trio.CancelScope`; `Monitor.stop_monitoring` cancels that
scope.  Polls follow a drift-free schedule (``trio.sleep_until``) so a slow
poll never shifts the next one.  A corrupted run is handed to the executor
synchronously and its task ends.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._client import open_service_client
from ._errors import AlreadyPendingError, RecoveryDisabledError
from ._executor import Executor, _new_executor
from ._policy import Policy
from ._telemetry import Statistics, Telemetry, TelemetryEvent
from ._types import validate_run_id
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from ._config import Config
    from ._protocols import RestClientFactory, RestClientProtocol, ServiceProtocol
    from ._types import TrainingRun

__all__ = ["Monitor", "open_monitor"]

logger = logging.getLogger("trio_tinkex_recovery")


@attrs.define(eq=False)
class _Watch:
    """What the monitor knows about one watched run."""

    run_id: str
    service: ServiceProtocol | None
    rest: RestClientProtocol
    metadata: Mapping[str, Any]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class Monitor(metaclass=NoPublicConstructor):
    """Watches runs and hands corrupted ones to an executor.

    Made by `open_monitor`; it has no public constructor.
    """

    _factory_hint = "use open_monitor()"

    def __init__(
        self,
        *,
        policy: Policy,
        config: Config | None,
        service: ServiceProtocol | None,
        rest: RestClientProtocol | None,
        rest_for_service: RestClientFactory | None,
        executor: Executor,
        telemetry: Telemetry,
        nursery: trio.Nursery,
        rng: random.Random,
    ) -> None:
        self._policy = policy
        self._config = config
        self._service = service
        self._rest = rest
        self._rest_for_service = rest_for_service
        self._executor = executor
        self._telemetry = telemetry
        self._nursery = nursery
        self._rng = rng
        self._watches: dict[str, _Watch] = {}
        self._polls = 0

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
        """Start watching ``run_id``; the first poll happens at once.

        Watching a run that is already watched updates its service and
        metadata; there is still one polling task.

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
            Exception: Whatever ``rest_for_service`` raised; nothing is scheduled.
        """
        await trio.lowlevel.checkpoint()
        if not self._policy.enabled:
            raise RecoveryDisabledError(
                "recovery is disabled; pass Policy(enabled=True) to opt in"
            )
        validate_run_id(run_id)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {metadata!r}")
        if service is None:
            service = self._service
        rest = await self._rest_client(run_id, service)
        metadata = dict(metadata or {})
        watch = self._watches.get(run_id)
        if watch is not None:
            watch.service, watch.rest, watch.metadata = service, rest, metadata
            return
        watch = _Watch(run_id=run_id, service=service, rest=rest, metadata=metadata)
        self._watches[run_id] = watch
        self._nursery.start_soon(self._watch, watch)

    def stop_monitoring(self, run_id: str) -> None:
        """Stop watching ``run_id``; no event about its polling follows.

        A recovery already handed to the executor goes on.  Unknown runs
        are ignored.
        """
        watch = self._watches.pop(run_id, None)
        if watch is not None:
            watch.scope.cancel()

    def statistics(self) -> Statistics:
        """Counters of polls, detections, recoveries and dropped events."""
        counts = self._telemetry.counts
        executor = self._executor.statistics()
        own_dropped = self._telemetry.dropped
        shared = self._executor._telemetry is self._telemetry
        return attrs.evolve(
            executor,
            monitored=len(self._watches),
            polls=self._polls,
            poll_errors=counts["poll_error"],
            detected=counts["detected"],
            dropped_events=own_dropped
            if shared
            else own_dropped + executor.dropped_events,
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

    async def _rest_client(
        self, run_id: str, service: ServiceProtocol | None
    ) -> RestClientProtocol:
        if self._rest is not None:
            return self._rest
        if service is None:
            raise ValueError(
                f"no service to poll run {run_id!r} with: pass service= to "
                "monitor_run() or open_monitor(), or rest= to open_monitor()"
            )
        if self._rest_for_service is None:
            return service.create_rest_client()
        rest = self._rest_for_service(service)
        if inspect.isawaitable(rest):
            rest = await rest
        return rest

    def _current(self, watch: _Watch) -> bool:
        return self._watches.get(watch.run_id) is watch

    async def _watch(self, watch: _Watch) -> None:
        with watch.scope:
            try:
                await self._poll_forever(watch)
            finally:
                if self._current(watch):
                    del self._watches[watch.run_id]

    async def _poll_forever(self, watch: _Watch) -> None:
        interval = self._policy.poll_interval
        spread = self._policy.jitter * interval
        start = trio.current_time()
        slot = 0
        while True:
            offset = self._rng.uniform(0, spread) if spread else 0.0
            await trio.sleep_until(start + slot * interval + offset)
            if await self._poll(watch):
                return
            # Next slot on the fixed grid; skip slots already missed (with an
            # interval so small the count overflows, just poll again).
            missed = (trio.current_time() - start) / interval
            slot = max(slot + 1, math.ceil(missed) if math.isfinite(missed) else 0)

    async def _poll(self, watch: _Watch) -> bool:
        """Poll once; return whether the watch is over (run handed over)."""
        self._polls += 1
        try:
            run = await watch.rest.get_training_run(watch.run_id)
        except Exception as exc:
            # Per-run failures become events; they never trigger recovery.
            if self._current(watch):
                self._telemetry.emit(
                    "poll_error", watch.run_id, {**watch.metadata, "error": exc}
                )
            return False
        if not self._current(watch) or not run.corrupted:
            return False
        self._telemetry.emit(
            "detected",
            watch.run_id,
            {
                **watch.metadata,
                "strategy": str(self._policy.checkpoint_strategy),
                "checkpoint": run.last_checkpoint.tinker_path
                if run.last_checkpoint
                else None,
            },
        )
        return self._hand_over(watch, run)

    def _hand_over(self, watch: _Watch, run: TrainingRun) -> bool:
        try:
            self._executor._submit(
                watch.run_id,
                watch.service,
                self._policy,
                config=self._config,
                metadata=watch.metadata,
                last_checkpoint=run.last_checkpoint,
                run=run,
                rest=watch.rest,
                follow=self._follow,
            )
        except AlreadyPendingError:
            return False
        except (ValueError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.error(
                "run %s is corrupted but could not be handed over: %s",
                watch.run_id,
                exc,
            )
            return False
        del self._watches[watch.run_id]
        return True

    async def _follow(
        self, run_id: str, service: ServiceProtocol | None, metadata: Mapping[str, Any]
    ) -> None:
        await self.monitor_run(run_id, service=service, metadata=metadata)


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
) -> AsyncIterator[Monitor]:
    """Watch runs for the duration of the ``async with`` block.

    Args:
        policy: How to recover; defaults to ``config.recovery``, else a
            disabled `Policy` (recovery is opt-in).
        config: Where and how to reach Tinker.  With neither ``service`` nor
            ``rest``, the monitor opens its own native client from it
            (`open_service_client`) and closes it on the way out.
        service: The default service for runs that name none.
        rest: Polls every run; by default each run is polled through
            ``rest_for_service(service)``.
        rest_for_service: Turns a service into its REST client (sync or
            async); default ``service.create_rest_client()``.
        executor: Where corrupted runs go; by default the monitor runs its
            own (with ``max_concurrent`` and ``rest``) in its nursery and
            forwards its events to the monitor's subscribers.
        max_concurrent: Attempts at once for the monitor's own executor.

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
    async with AsyncExitStack() as stack:
        if service is None and rest is None and config is not None:
            service = await stack.enter_async_context(open_service_client(config))
        nursery = await stack.enter_async_context(trio.open_nursery())
        if executor is None:
            executor = _new_executor(
                rest=rest,
                service=service,
                max_concurrent=max_concurrent,
                telemetry=telemetry,
                rng=rng,
            )
            await nursery.start(executor._run)
        monitor = Monitor._create(
            policy=policy,
            config=config,
            service=service,
            rest=rest,
            rest_for_service=rest_for_service,
            executor=executor,
            telemetry=telemetry,
            nursery=nursery,
            rng=rng,
        )
        try:
            yield monitor
        finally:
            nursery.cancel_scope.cancel()
