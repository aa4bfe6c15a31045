"""The executor: one task that restarts corrupted runs from checkpoints.

Hand-offs arrive on a memory channel and are served in arrival order by a
single task, which holds a `trio.CapacityLimiter` slot for each attempt so at
most ``max_concurrent`` attempts run at once.  Each run's progress lives in
one `RecoveryState` record, replaced on every transition.  Which
checkpoints an attempt tries is `_selection`'s business; how a recovery
ended goes out on `Executor.outcomes` before any user callback runs, and
callbacks run in tasks of their own, holding no slot.  What a hand-over
carries and how it ends (`Request`, `RecoveryOutcome`) live in `_recovery`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import trio

from .._errors import (
    AlreadyPendingError,
    CheckpointUnavailableError,
    NoCheckpointError,
    RecoveryDisabledError,
    is_retryable,
)
from .._failpoints import crash_point
from .._policy import Policy
from .._state import RecoveryPhase, RecoveryState
from .._store._base import LeaseLostError, StoredRecovery, StoreError, json_safe
from .._store._ledger import Journal
from .._text import printable
from .._types import Checkpoint, validate_run_id
from .._util import NoPublicConstructor
from ._recovery import RecoveryOutcome, Request, call_back, describe_error
from ._selection import candidates
from ._telemetry import EventName, Statistics, Telemetry, TelemetryEvent

if TYPE_CHECKING:
    import random

    from .._protocols import RestClientProtocol, ServiceProtocol
    from .._store._base import Snapshot, Store
    from .._types import TrainingRun

__all__ = [
    "Executor",
    "RecoveryOutcome",
    "RecoveryPhase",
    "RecoveryState",
]

logger = logging.getLogger("trio_tinkex_recovery")

#: Seconds an outcome's journal write may take once its block is cancelled:
#: the write is shielded so that a recovery that ended is never left
#: looking pending (and restored again by the next start).
OUTCOME_WRITE_LIMIT: Final = 30.0
#: Finished recovery records kept (the oldest are forgotten first).
FINISHED_KEPT: Final = 10_000


@final
class Executor(metaclass=NoPublicConstructor):
    """Runs recoveries; made by `open_executor`, not constructed directly.

    Use `recover` to hand over a corrupted run, `outcomes` to learn how
    recoveries end, `subscribe` for events, `statistics` for counters and
    `recovery_state` for one run's record.
    """

    _factory_hint = "use open_executor()"

    def __init__(
        self,
        *,
        rest: RestClientProtocol | None,
        service: ServiceProtocol | None,
        max_concurrent: int,
        telemetry: Telemetry,
        rng: random.Random,
        journal: Store | None,
    ) -> None:
        self._rest = rest
        self._journal = journal
        # What restores write ahead, for services that take a ledger.
        self._ledgers = Journal(journal) if journal is not None else None
        self._service = service
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._telemetry = telemetry
        self._rng = rng
        self._states: dict[str, RecoveryState] = {}
        # Runs whose record is pending; finished ones, oldest first.
        self._pending: set[str] = set()
        self._finished: dict[str, None] = {}
        # Hand-offs not yet picked up by the executor task.
        self._queued: dict[str, Request] = {}
        # The cancel scope of each run's recovery not finished yet.
        self._scopes: dict[str, trio.CancelScope] = {}
        self._outcome_sends: set[trio.MemorySendChannel[RecoveryOutcome]] = set()
        # Hand-offs and callbacks not yet finished, and its event.
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()
        self._send, self._receive = trio.open_memory_channel[Request](math.inf)

    def __repr__(self) -> str:
        return (
            f"<Executor max_concurrent={self._limiter.total_tokens} "
            f"in_progress={self._in_progress()}>"
        )

    # -- public API --------------------------------------------------------

    async def recover(
        self,
        run_id: str,
        service: ServiceProtocol | None,
        policy: Policy,
        *,
        metadata: Mapping[str, Any] | None = None,
        last_checkpoint: Checkpoint | str | None = None,
        run: TrainingRun | None = None,
        rest: RestClientProtocol | None = None,
    ) -> None:
        """Queue a recovery of ``run_id`` and return at once.

        Args:
            run_id: The corrupted run.
            service: Creates the new training client; ``None`` for the
                executor's default service.
            policy: How to recover; must be enabled.
            metadata: User metadata, merged into every event; its
                ``training_client`` (or ``training_pid``) entry is passed to
                ``on_recovery`` as the old client.
            last_checkpoint: The run's newest checkpoint, when known
                (a `Checkpoint` or a ``tinker://`` path).
            run: The run as last polled, when known.
            rest: Reads the run and its checkpoints for this recovery; by
                default the executor's ``rest``, else the service's
                ``create_rest_client()``.

        Raises:
            RecoveryDisabledError: ``policy.enabled`` is false.
            AlreadyPendingError: The run is queued, attempting or waiting.
            ValueError: A bad run id, checkpoint path, or no service at all.
            trio.ClosedResourceError: The executor has shut down.

        Cancelled before it returns, it has queued nothing.
        """
        await trio.lowlevel.checkpoint()
        if isinstance(last_checkpoint, str):
            last_checkpoint = Checkpoint.from_path(last_checkpoint)
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a Policy, got {policy!r}")
        if not policy.enabled:
            raise RecoveryDisabledError(
                "recovery is disabled; pass Policy(enabled=True) to opt in"
            )
        validate_run_id(run_id)
        service = service if service is not None else self._service
        if service is None:
            raise ValueError(
                f"no service to recover run {run_id!r} with: pass one to "
                "recover() or open_executor(service=...)"
            )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {metadata!r}")
        state = self._states.get(run_id)
        if state is not None and state.pending:
            raise AlreadyPendingError(run_id)
        request = Request(
            run_id=run_id,
            service=service,
            policy=policy,
            metadata=dict(metadata or {}),
            last_checkpoint=last_checkpoint,
            run=run,
            rest=rest,
        )
        # An unbounded buffer: send_nowait only fails once the executor is gone.
        self._send.send_nowait(request)
        self._queued[run_id] = request
        self._scopes[run_id] = trio.CancelScope()
        self._record(RecoveryState(run_id=run_id, phase="queued"))
        self._add_busy(1)

    async def resume(
        self,
        recovery: StoredRecovery,
        service: ServiceProtocol | None,
        policy: Policy,
        *,
        rest: RestClientProtocol | None = None,
    ) -> None:
        """Queue a pending recovery read from the journal, where it stopped.

        An ``attempting`` record starts again at its attempt (its restore is
        reconciled, never blindly repeated); a ``waiting`` one waits out
        what is left of its backoff (kept in wall-clock time), then starts
        the next attempt.  Attempts count across restarts.

        Raises:
            ValueError: The record is not pending.
            AlreadyPendingError: The run is already pending here.
            RecoveryDisabledError: ``policy.enabled`` is false.
        """
        state = recovery.state
        if not state.pending:
            raise ValueError(f"the recovery of run {state.run_id!r} is not pending")
        not_before = None
        first = max(state.attempt, 1)
        if state.phase == "waiting":
            first = state.attempt + 1
            if recovery.retry_at_wall is not None:
                # Never longer than a backoff can be: the clock that wrote
                # the record may be ahead of this one.
                left = recovery.retry_at_wall - time.time()
                left = min(max(0.0, left), policy.max_backoff)
                not_before = trio.current_time() + left
        await self.recover(
            state.run_id,
            service,
            policy,
            metadata=recovery.metadata,
            last_checkpoint=None,
            rest=rest,
        )
        request = self._queued[state.run_id]
        request.first_attempt = first
        request.not_before = not_before
        self._set(state.run_id, attempt=state.attempt, checkpoint=state.checkpoint)

    def remember(self, snapshot: Snapshot) -> None:
        """Take over a journal's write-ahead records, read at start.

        Restores that may have been sent before a restart are reconciled by
        the next attempt of their run, before anything is sent again.
        """
        if self._ledgers is not None:
            self._ledgers.remember(snapshot)

    async def wait_idle(self) -> None:
        """Return once every recovery handed over so far has finished.

        Finished means done, exhausted or interrupted, with its callbacks
        returned.  Returns at once (after a checkpoint) when the executor
        is idle.
        """
        await trio.lowlevel.checkpoint()
        while self._busy:
            await self._idle.wait()

    def interrupt(self, run_id: str) -> None:
        """Cancel ``run_id``'s recovery (a restore call in flight too) at once.

        It ends ``interrupted`` (no ``on_failure``); its journal record is
        left for whoever resumes it (a replica that lost the run's lease
        calls this).  A run with no recovery pending is ignored.
        """
        scope = self._scopes.get(run_id)
        if scope is not None:
            scope.cancel()

    def recovery_state(self, run_id: str) -> RecoveryState | None:
        """The run's recovery record, or ``None`` if it was never handed over.

        Every pending record is kept, and the latest finished ones (ten
        thousand): a watcher that lives for months does not grow without
        bound.
        """
        return self._states.get(run_id)

    @property
    def recoveries(self) -> Mapping[str, RecoveryState]:
        """Every run's recovery record (a snapshot)."""
        return dict(self._states)

    def statistics(self) -> Statistics:
        """Counters of attempts, outcomes and dropped events."""
        counts = self._telemetry.counts
        return Statistics(
            attempts=counts["started"],
            completed=counts["completed"],
            failed=counts["failed"],
            exhausted=counts["exhausted"],
            interrupted=counts["interrupted"],
            in_progress=self._in_progress(),
            dropped_events=self._telemetry.dropped,
        )

    def subscribe(
        self, max_buffer: int = 1024
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[TelemetryEvent]]:
        """Receive this executor's events while the ``async with`` block runs.

        The buffer holds ``max_buffer`` events; past that, events are dropped
        and counted rather than slowing the executor down.
        """
        return self._telemetry.subscribe(max_buffer)

    @asynccontextmanager
    async def outcomes(
        self,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[RecoveryOutcome]]:
        """Receive how each recovery ends while the ``async with`` block runs.

        Unlike events, outcomes are never dropped: the buffer is unbounded
        (one outcome per recovery).  An outcome is sent before the
        recovery's callbacks run, so a reader (the monitor following a
        recovered run) is never held up by a slow callback.
        """
        send, receive = trio.open_memory_channel[RecoveryOutcome](math.inf)
        self._outcome_sends.add(send)
        await trio.lowlevel.checkpoint()
        try:
            with receive:
                yield receive
        finally:
            self._outcome_sends.discard(send)
            send.close()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve hand-offs in arrival order until cancelled.

        `open_executor` runs this for you; call it yourself (with
        ``nursery.start``) only for an executor made by another owner.
        Cancelling it interrupts the recoveries in progress.
        """
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async with self._receive:
                    async for request in self._receive:
                        # Take the slot here, in arrival order; the run's
                        # task gives it back when its attempt ends.
                        await self._limiter.acquire_on_behalf_of(request)
                        del self._queued[request.run_id]
                        nursery.start_soon(self._recover_in_scope, request, nursery)
        finally:
            # Hand-offs still queued for a slot end as interrupted too.
            for request in list(self._queued.values()):
                del self._queued[request.run_id]
                self._interrupt(request)
                self._add_busy(-1)

    # -- internals ---------------------------------------------------------

    def _in_progress(self) -> int:
        return len(self._pending)

    def _add_busy(self, delta: int) -> None:
        self._busy += delta
        if self._busy and self._idle.is_set():
            self._idle = trio.Event()
        elif not self._busy:
            self._idle.set()

    def _set(self, run_id: str, **changes: Any) -> RecoveryState:
        return self._record(attrs.evolve(self._states[run_id], **changes))

    def _record(self, state: RecoveryState) -> RecoveryState:
        run_id = state.run_id
        self._states[run_id] = state
        self._finished.pop(run_id, None)
        if state.pending:
            self._pending.add(run_id)
            return state
        self._pending.discard(run_id)
        self._finished[run_id] = None
        if len(self._finished) > FINISHED_KEPT:
            oldest = next(iter(self._finished))
            del self._finished[oldest]
            del self._states[oldest]
        return state

    async def _persist(
        self,
        request: Request,
        *,
        state: RecoveryState | None = None,
        retry_at_wall: float | None = None,
    ) -> None:
        """Write the run's record (or ``state``) to the journal, if any."""
        if self._journal is None:
            return
        await self._journal.put_recovery(
            StoredRecovery(
                state=state or self._states[request.run_id],
                retry_at_wall=retry_at_wall,
                metadata=json_safe(request.metadata),
            )
        )

    async def _end(
        self, request: Request, **changes: Any
    ) -> tuple[RecoveryState, bool]:
        """Write how the recovery ended, then make it so; and whether it was written.

        The write comes first and is shielded from cancellation (for at most
        `OUTCOME_WRITE_LIMIT` seconds): a block that exits meanwhile cannot
        leave the journal saying ``attempting`` for a recovery that ended.
        A failure to write is logged, not raised.
        """
        state = attrs.evolve(self._states[request.run_id], **changes)
        written = False
        with trio.move_on_after(OUTCOME_WRITE_LIMIT, shield=True) as scope:
            try:
                await self._persist(request, state=state)
                written = True
            except StoreError as exc:
                logger.error("recovery of run %s: %s", request.run_id, exc)
        if scope.cancelled_caught:
            logger.error(
                "recovery of run %s: its outcome could not be written in %.0f s",
                request.run_id,
                OUTCOME_WRITE_LIMIT,
            )
        return self._record(state), written

    def _interrupt(self, request: Request) -> None:
        """End a recovery cut short (the executor closing, a lost lease)."""
        run_id = request.run_id
        state = self._states.get(run_id)
        if state is None or not state.pending:
            return
        state = self._set(run_id, phase="interrupted", retry_at=None)
        self._telemetry.emit(
            "interrupted",
            run_id,
            request.event_metadata(attempt=state.attempt, checkpoint=state.checkpoint),
            attempt=state.attempt,
        )
        self._publish(RecoveryOutcome(state))

    def _publish(self, outcome: RecoveryOutcome) -> None:
        for send in list(self._outcome_sends):
            try:
                send.send_nowait(outcome)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._outcome_sends.discard(send)

    def _call_back_soon(
        self,
        nursery: trio.Nursery,
        name: str,
        callback: Callable[..., Any],
        *args: Any,
    ) -> None:
        """Run a user callback in its own task: it holds no slot, delays nothing."""
        self._add_busy(1)

        async def call() -> None:
            try:
                await call_back(name, callback, *args)
            finally:
                self._add_busy(-1)

        nursery.start_soon(call)

    async def _recover_in_scope(self, request: Request, nursery: trio.Nursery) -> None:
        """`_recover` in the cancel scope `interrupt` cancels."""
        scope = self._scopes[request.run_id]
        with scope:
            await self._recover(request, nursery)
        if self._scopes.get(request.run_id) is scope:
            del self._scopes[request.run_id]

    async def _recover(self, request: Request, nursery: trio.Nursery) -> None:
        run_id = request.run_id
        holding = True
        try:
            if self._scopes[run_id].cancel_called:
                return  # Interrupted while queued for a slot: nothing began.
            if request.not_before is not None:
                # Resumed in its retry wait: wait out the rest, holding no slot.
                self._limiter.release_on_behalf_of(request)
                holding = False
                self._set(run_id, phase="waiting", retry_at=request.not_before)
                await trio.sleep_until(request.not_before)
                await self._limiter.acquire_on_behalf_of(request)
                holding = True
            failures = request.first_attempt - 1
            while True:
                attempt = failures + 1
                try:
                    client, checkpoint = await self._attempt(request, attempt)
                except LeaseLostError as exc:
                    # Another replica owns the run now: stop before any side
                    # effect, record nothing; the run is theirs to finish.
                    self._set(run_id, error=describe_error(exc))
                    return
                except Exception as exc:
                    self._limiter.release_on_behalf_of(request)
                    holding = False
                    failures += 1
                    if not await self._after_failure(request, attempt, exc, nursery):
                        return
                    await self._limiter.acquire_on_behalf_of(request)
                    holding = True
                    continue
                self._limiter.release_on_behalf_of(request)
                holding = False
                await self._complete(request, attempt, client, checkpoint, nursery)
                return
        finally:
            if holding:
                self._limiter.release_on_behalf_of(request)
            # Cut short by cancellation (the executor is closing) or by a
            # lost lease: the recovery did not fail, it was interrupted.
            self._interrupt(request)
            self._add_busy(-1)

    async def _after_failure(
        self, request: Request, attempt: int, exc: Exception, nursery: trio.Nursery
    ) -> bool:
        """Record a failed attempt; wait out the backoff if another may follow.

        Returns:
            Whether to attempt again.
        """
        policy = request.policy
        run_id = request.run_id
        error_text = describe_error(exc)
        self._set(run_id, error=error_text)
        self._telemetry.emit(
            "failed",
            run_id,
            request.event_metadata(
                attempt=attempt,
                error=exc,
                checkpoint=self._states[run_id].checkpoint,
            ),
            attempt=attempt,
        )
        if attempt >= policy.max_attempts or not is_retryable(exc):
            state, _ = await self._end(request, phase="exhausted", retry_at=None)
            self._telemetry.emit(
                "exhausted",
                run_id,
                request.event_metadata(attempt=attempt, error=exc),
                attempt=attempt,
            )
            self._publish(RecoveryOutcome(state))
            if policy.on_failure is not None:
                self._call_back_soon(
                    nursery, "on_failure", policy.on_failure, run_id, exc
                )
            return False
        delay = self._jittered(policy.backoff_delay(attempt), policy.jitter)
        retry_at = trio.current_time() + delay
        self._set(run_id, phase="waiting", retry_at=retry_at)
        try:
            await self._persist(request, retry_at_wall=time.time() + delay)
        except StoreError as exc:
            # The wait goes on; a restart would retry at once instead.
            logger.error("recovery of run %s: %s", run_id, exc)
        await trio.sleep_until(retry_at)
        return True

    async def _attempt(self, request: Request, attempt: int) -> tuple[Any, Checkpoint]:
        """One attempt: restore the first usable candidate checkpoint."""
        run_id = request.run_id
        policy = request.policy
        self._set(run_id, phase="attempting", attempt=attempt, retry_at=None)
        self._telemetry.emit(
            "started", run_id, request.event_metadata(attempt=attempt), attempt=attempt
        )
        # Written before any side effect of the attempt: a failure to write
        # fails the attempt (after its ``started``) with nothing sent.
        await self._persist(request)
        crash_point("attempt-written")
        found = candidates(
            policy.checkpoint_strategy,
            run_id=run_id,
            rest=self._rest_for(request),
            last_checkpoint=request.last_checkpoint,
            run=request.run,
        )
        last_error: CheckpointUnavailableError | None = None
        async with aclosing(found):
            async for checkpoint in found:
                self._set(run_id, checkpoint=checkpoint.tinker_path)
                self._telemetry.emit(
                    "checkpoint_selected",
                    run_id,
                    request.event_metadata(
                        attempt=attempt, checkpoint=checkpoint.tinker_path
                    ),
                    attempt=attempt,
                )
                try:
                    client = await self._restore(request, checkpoint, attempt)
                except CheckpointUnavailableError as exc:
                    if not policy.fallback:
                        raise
                    logger.warning(
                        "recovery of run %s: checkpoint %s unavailable (%s); "
                        "trying an older one",
                        printable(run_id),
                        printable(checkpoint.tinker_path),
                        printable(str(exc)),
                    )
                    last_error = exc
                    continue
                self._emit_restored(
                    "client_created", request, attempt, checkpoint, client
                )
                return client, checkpoint
        if last_error is not None:
            raise last_error
        raise NoCheckpointError(f"run {run_id!r} has no checkpoint to restore from")

    async def _restore(
        self, request: Request, checkpoint: Checkpoint, attempt: int
    ) -> Any:
        """Restore ``checkpoint``; with a journal, writing ahead what is sent."""
        service = request.service
        path = checkpoint.tinker_path
        optimizer = request.policy.restore_optimizer
        restore_with_ledger = getattr(service, "restore_with_ledger", None)
        if self._ledgers is not None and restore_with_ledger is not None:
            request.ledger = self._ledgers.ledger(request.run_id, attempt)
            return await restore_with_ledger(
                path, optimizer=optimizer, ledger=request.ledger
            )
        if optimizer:
            return await service.create_training_client_from_state_with_optimizer(path)
        return await service.create_training_client_from_state(path)

    def _rest_for(self, request: Request) -> RestClientProtocol:
        if request.rest is None:
            request.rest = self._rest or request.service.create_rest_client()
        return request.rest

    async def _complete(
        self,
        request: Request,
        attempt: int,
        client: Any,
        checkpoint: Checkpoint,
        nursery: trio.Nursery,
    ) -> None:
        run_id = request.run_id
        policy = request.policy
        new_run_id = getattr(client, "model_id", None)
        if not isinstance(new_run_id, str):
            new_run_id = None
        crash_point("restored")
        state, written = await self._end(
            request, phase="done", new_run_id=new_run_id, error=None
        )
        crash_point("outcome-written")
        if written and request.ledger is not None:
            with trio.move_on_after(OUTCOME_WRITE_LIMIT, shield=True):
                try:
                    await request.ledger.settle()
                except StoreError as exc:
                    logger.error("recovery of run %s: %s", run_id, exc)
        self._emit_restored(
            "completed", request, attempt, checkpoint, client, new_run_id=new_run_id
        )
        self._publish(RecoveryOutcome(state, client=client, checkpoint=checkpoint))
        if policy.on_recovery is not None:
            old = request.metadata.get(
                "training_client", request.metadata.get("training_pid")
            )
            self._call_back_soon(
                nursery, "on_recovery", policy.on_recovery, old, client, checkpoint
            )

    def _emit_restored(
        self,
        name: EventName,
        request: Request,
        attempt: int,
        checkpoint: Checkpoint,
        client: Any,
        **extra: Any,
    ) -> None:
        """``client_created`` or ``completed``: the checkpoint and its client."""
        metadata = request.event_metadata(
            attempt=attempt, checkpoint=checkpoint.tinker_path, client=client, **extra
        )
        self._telemetry.emit(name, request.run_id, metadata, attempt=attempt)

    def _jittered(self, delay: float, jitter: float) -> float:
        if jitter == 0 or delay == 0:
            return delay
        return delay * self._rng.uniform(1 - jitter, 1 + jitter)
