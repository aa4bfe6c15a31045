"""Training through a recovery in one Trio program: `Training` and its steps.

`Monitor.training` watches one run for a training loop that runs in the same
program, and carries the loop through each recovery with three rules:

1. **One place for the current client.**  ``training.client`` (and each
   ``step.client``) is the client to use; a recovery replaces it, and the
   next step, together.
2. **Resume from the checkpoint's step.**  After a recovery the next step is
   the restored checkpoint's step + 1 (``step_of``), not the loop's count:
   the steps the old model did after that checkpoint are lost with it and
   are done again, once each.
3. **Pause at a step boundary.**  A step runs on one client from start to
   end, in a cancel scope that the monitor's detection of the run cancels:
   no request reaches the old client after the detection, and the next
   step waits for the new client.

A failed request alone proves nothing (a transient error looks the same),
so a step whose body raises a Tinker error waits for the verdict of a poll
of the run that began after the failure: corrupted is a detection; healthy
means the step is tried again, up to ``retries`` times in a row.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs
import trio

from .._errors import RecoveryFailedError, TinkerAPIError
from .._util import NoPublicConstructor

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from .._types import Checkpoint
    from ._recovery import RecoveryOutcome

__all__ = ["Recovered", "Step", "Training", "TrainingHost", "open_training"]

#: Turns the restored checkpoint into the last step it holds.
StepOf = Callable[["Checkpoint"], int]


class Tracker(Protocol):
    """What the monitor tells a training about its current run."""

    def polled(self, corrupted: bool, began: float) -> None:
        """A poll that began at ``began`` (Trio time) found the run so."""
        ...

    def detected(self) -> None:
        """The run was found corrupted and handed over for recovery."""
        ...


class TrainingHost(Protocol):
    """The monitor, as a training uses it."""

    async def watch(self, run_id: str, metadata: Mapping[str, Any]) -> None:
        """Watch ``run_id`` (``Monitor.monitor_run``)."""
        ...

    def track(self, run_id: str, tracker: Tracker) -> Callable[[], None]:
        """Tell ``tracker`` about ``run_id``'s polls; returns how to stop."""
        ...

    def recovery_outcomes(
        self,
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[RecoveryOutcome]]:
        """How each recovery ends (the executor's outcomes)."""
        ...

    async def start(self, task: Callable[..., Awaitable[None]]) -> None:
        """Start ``task`` in the monitor's nursery (``nursery.start``)."""
        ...


@attrs.frozen
class Recovered:
    """One recovery a training went through."""

    #: The corrupted run.
    old_run_id: str
    #: The run restored from its checkpoint (``None`` if the client has no id).
    new_run_id: str | None
    #: The checkpoint restored (``tinker://`` path).
    checkpoint: str
    #: The step the training resumed at (the checkpoint's step + 1).
    resumed_at: int


@attrs.frozen
class Step:
    """One step of a training: its number and the client to run it on."""

    #: The step number (``training.next_step`` when the step began).
    number: int
    #: The training client for this step; never changes during the step.
    client: Any


def default_step_of(checkpoint: Checkpoint) -> int:
    """The checkpoint's ``user_metadata["step"]``, as an int.

    Raises:
        RecoveryFailedError: The checkpoint has no such entry.
    """
    value = (checkpoint.user_metadata or {}).get("step")
    try:
        if value is None or isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise RecoveryFailedError(
            f"checkpoint {checkpoint.tinker_path} has no step in its "
            f"user_metadata (got {value!r}): save checkpoints with "
            "user_metadata={'step': ...}, or pass step_of= to training()"
        ) from None


@final
class Training(metaclass=NoPublicConstructor):
    """A training loop carried through recoveries; made by `Monitor.training`.

    Use `step` for each step; read `client`, `next_step` and `history`.
    """

    _factory_hint = "use Monitor.training()"

    def __init__(
        self,
        *,
        run_id: str,
        client: Any,
        first_step: int,
        step_of: StepOf,
        retries: int,
    ) -> None:
        self._run_id = run_id
        self._client = client
        self._next_step = first_step
        self._step_of = step_of
        self._retries = retries
        self._history: list[Recovered] = []
        # Set while no recovery of the current run is under way.
        self._ready = trio.Event()
        self._ready.set()
        self._failure: RecoveryFailedError | None = None
        self._scope: trio.CancelScope | None = None
        self._failed_in_a_row = 0
        # A step waiting for a verdict: polls that began after this count.
        self._verdict_after = math.inf
        self._verdict: trio.Event | None = None
        self._verdict_corrupted = False

    def __repr__(self) -> str:
        return (
            f"<Training run={self._run_id!r} next_step={self._next_step} "
            f"recoveries={len(self._history)}>"
        )

    @property
    def run_id(self) -> str:
        """The run the training trains now."""
        return self._run_id

    @property
    def client(self) -> Any:
        """The training client to use now (replaced by each recovery)."""
        return self._client

    @property
    def next_step(self) -> int:
        """The number of the next step to run."""
        return self._next_step

    @property
    def history(self) -> tuple[Recovered, ...]:
        """One record per recovery, oldest first."""
        return tuple(self._history)

    @asynccontextmanager
    async def step(self) -> AsyncIterator[Step]:
        """Run one step: the body of the ``async with`` block.

        Waits while a recovery of the run is in progress, then runs the body
        in a cancel scope that a detection of the run cancels.  A body that
        completes advances `next_step` by one.  A body cut short by a
        detection exits quietly (`next_step` is set when the recovery
        completes).  A body that raises a Tinker error waits for a poll of
        the run that began after the failure: corrupted counts as a
        detection; healthy exits quietly with `next_step` unchanged, up to
        ``retries`` times in a row, then the error propagates.

        Raises:
            RecoveryFailedError: The recovery of the run was exhausted, or
                its checkpoint says no step (see ``step_of``).
        """
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure
        step = Step(number=self._next_step, client=self._client)
        scope = self._scope = trio.CancelScope()
        failed_at: float | None = None
        try:
            with scope:
                try:
                    yield step
                except Exception as exc:
                    if not _is_tinker_error(exc):
                        raise
                    failed_at = trio.current_time()
                    error = exc
        finally:
            self._scope = None
        if scope.cancelled_caught:
            return  # detected: redone after the recovery, from its checkpoint
        if failed_at is None:
            self._next_step += 1
            self._failed_in_a_row = 0
            return
        if await self._corrupted_since(failed_at):
            return  # as a detection
        self._failed_in_a_row += 1
        if self._failed_in_a_row > self._retries:
            self._failed_in_a_row = 0
            raise error

    async def _corrupted_since(self, failed_at: float) -> bool:
        """Wait for a poll that began after ``failed_at``; whether it found
        the run corrupted (or a detection came first)."""
        if not self._ready.is_set():
            return True
        self._verdict_after = failed_at
        self._verdict = verdict = trio.Event()
        self._verdict_corrupted = False
        try:
            await verdict.wait()
        finally:
            self._verdict_after = math.inf
            self._verdict = None
        return self._verdict_corrupted

    # -- what the monitor tells it (Tracker) -------------------------------

    def polled(self, corrupted: bool, began: float) -> None:
        if self._verdict is not None and began >= self._verdict_after:
            self._verdict_corrupted = corrupted
            self._verdict.set()

    def detected(self) -> None:
        if self._ready.is_set():
            self._ready = trio.Event()
        if self._scope is not None:
            self._scope.cancel()
        if self._verdict is not None:
            self._verdict_corrupted = True
            self._verdict.set()

    # -- how a recovery of the current run ended ---------------------------

    def recovered(self, outcome: RecoveryOutcome) -> str | None:
        """Take in a finished recovery; the run to watch next, if any."""
        state = outcome.state
        if state.phase == "done" and outcome.checkpoint is not None:
            try:
                last = self._step_of(outcome.checkpoint)
            except RecoveryFailedError as exc:
                self._failure = exc
            else:
                self._history.append(
                    Recovered(
                        old_run_id=self._run_id,
                        new_run_id=state.new_run_id,
                        checkpoint=outcome.checkpoint.tinker_path,
                        resumed_at=last + 1,
                    )
                )
                self._client = outcome.client
                self._next_step = last + 1
                self._failed_in_a_row = 0
                if state.new_run_id is not None:
                    self._run_id = state.new_run_id
        elif state.phase == "exhausted":
            self._failure = RecoveryFailedError(
                f"the recovery of run {self._run_id!r} was exhausted after "
                f"{state.attempt} attempt(s): {state.error}"
            )
        elif state.phase == "interrupted":
            self._failure = RecoveryFailedError(
                f"the recovery of run {self._run_id!r} was interrupted"
            )
        self._ready.set()
        return self._run_id if self._failure is None else None


def _is_tinker_error(exc: BaseException) -> bool:
    """Ours, or the official SDK's (whose errors live in the ``tinker`` package)."""
    return (
        isinstance(exc, TinkerAPIError)
        or type(exc).__module__.split(".")[0] == "tinker"
    )


@asynccontextmanager
async def open_training(
    host: TrainingHost,
    client_or_run_id: Any,
    *,
    first_step: int = 1,
    step_of: StepOf | None = None,
    retries: int = 2,
) -> AsyncIterator[Training]:
    """`Monitor.training`: see there."""
    client: Any = None
    if isinstance(client_or_run_id, str):
        run_id = client_or_run_id
    else:
        client = client_or_run_id
        model_id = getattr(client, "model_id", None)
        if not isinstance(model_id, str):
            raise TypeError(
                "training() needs a run id or a training client with a "
                f"model_id, got {client_or_run_id!r}"
            )
        run_id = model_id
    if isinstance(first_step, bool) or not isinstance(first_step, int):
        raise TypeError(f"first_step must be an int, got {first_step!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if step_of is not None and not callable(step_of):
        raise TypeError(f"step_of must be callable, got {step_of!r}")
    training = Training._create(
        run_id=run_id,
        client=client,
        first_step=first_step,
        step_of=step_of or default_step_of,
        retries=retries,
    )
    metadata = {} if client is None else {"training_client": client}
    untrack = host.track(run_id, training)
    scope = trio.CancelScope()

    async def follow(
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        nonlocal untrack
        with scope:
            async with host.recovery_outcomes() as outcomes:
                task_status.started()
                async for outcome in outcomes:
                    if outcome.run_id != training.run_id:
                        continue
                    untrack()
                    following = training.recovered(outcome)
                    if following is not None:
                        untrack = host.track(following, training)
                        await host.watch(
                            following, {"training_client": training.client}
                        )

    try:
        # In the monitor's nursery: an error raised from the block (from
        # `Training.step`) reaches the caller as it is, not in a group.
        await host.start(follow)
        await host.watch(run_id, metadata)
        yield training
    finally:
        untrack()
        scope.cancel()
