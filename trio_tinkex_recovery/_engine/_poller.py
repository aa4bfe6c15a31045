"""The polling of one watched run: its schedule, each poll, its verdict.

A run is first polled after a random delay of up to
``jitter * poll_interval``, then every ``poll_interval`` on a drift-free
grid (``trio.sleep_until``), so a slow poll never shifts the next one;
while its REST client's `Batcher` coalesces polls it follows the
batcher's shared grid instead.  A healthy poll of a run restored in its
current episode ends that episode; a corrupted one is handed over, and
the run's polling ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import NotFoundError
from .._failpoints import crash_point
from .._types import TrainingRun
from ._polling import FETCH, Batcher, Failed, PollCounts, read_listed
from ._watch import Watch, coalesced, request_time

if TYPE_CHECKING:
    import datetime as dt
    import random
    from collections.abc import Awaitable, Callable

    from .._policy import Policy
    from ._polling import Answer, Inline
    from ._telemetry import Telemetry

__all__ = ["Poller"]


@attrs.define(eq=False)
class Poller:
    """Polls watched runs for one monitor; the monitor decides what follows."""

    policy: Policy
    rng: random.Random
    telemetry: Telemetry
    counts: PollCounts
    #: Whether ``watch`` is still the monitor's watch of its run.
    is_current: Callable[[Watch], bool]
    #: Called when a healthy poll ends the run's corruption episode.
    episode_over: Callable[[Watch], None]
    #: Hands a corrupted run over; whether its watch is over.
    hand_over: Callable[[Watch, TrainingRun], Awaitable[bool]]
    #: Called when a discovered run is no longer known to the service.
    gone: Callable[[Watch], None]
    #: Called with each answered poll: corrupted or not, and when it began.
    observe: Callable[[Watch, bool, float], None]
    #: Watched runs reported stalled now.
    stalled_runs: int = 0

    def _check_stall(
        self, watch: Watch, run: TrainingRun | None, answer: Answer | None
    ) -> None:
        """Report the run ``stalled`` once its ``last_request_time`` stood still
        for ``stall_timeout`` seconds, and ``resumed`` when it moves again."""
        assert self.policy.stall_timeout is not None
        if run is not None:
            seen: dt.datetime | None = run.last_request_time
        elif isinstance(answer, Mapping):
            seen = request_time(answer.get("last_request_time"))
        else:
            seen = None
        if seen is None:
            return
        now = trio.current_time()
        if seen != watch.request_time:
            first = watch.request_time is None
            watch.request_time, watch.moved_at = seen, now
            if watch.stalled:
                watch.stalled = False
                self.stalled_runs -= 1
                self.telemetry.emit(
                    "resumed",
                    watch.run_id,
                    {**watch.metadata, "last_request_time": seen.isoformat()},
                )
            if not first:
                return
        still = now - watch.moved_at
        if not watch.stalled and still >= self.policy.stall_timeout:
            watch.stalled = True
            self.stalled_runs += 1
            self.telemetry.emit(
                "stalled",
                watch.run_id,
                {
                    **watch.metadata,
                    "last_request_time": seen.isoformat(),
                    "still_for": still,
                },
            )

    def unwatched(self, watch: Watch) -> None:
        """``watch``'s polling ended: it is no longer counted as stalled."""
        if watch.stalled:
            watch.stalled = False
            self.stalled_runs -= 1

    async def poll_forever(self, watch: Watch, first: Mapping[str, Any] | None) -> None:
        """Poll ``watch`` until it is handed over; ``first``: its first answer.

        Without ``first``, the first poll comes after a random delay of up
        to ``jitter * interval`` (or joins another new run's first poll, or
        the batcher's grid, within that window); with ``first`` it is that
        answer, at once.  On its own schedule the run is then polled every
        interval on a fixed grid, each slot jittered; while its batcher
        coalesces polls it follows the batcher's grid instead, and waits
        for each poll in the batcher.
        """
        interval = self.policy.poll_interval
        spread = self.policy.jitter * interval
        start = due = trio.current_time()
        if first is None:
            due += self.rng.uniform(0, spread) if spread else 0.0
            if watch.batcher is not None:
                due = watch.batcher.first_due(start, due, start + spread)
        slot = 0

        def inline(item: Mapping[str, Any], began: float) -> bool:
            return self._inline(watch, item, began)

        while True:
            if first is None and not coalesced(watch):
                await trio.sleep_until(due)
            # Asked again after the sleep: the batcher may coalesce by now.
            batcher = watch.batcher if coalesced(watch) else None
            asked = due
            over, due = await self._poll(watch, due, batcher, first, inline)
            if over:
                return
            if due != asked:
                # Polls answered inline moved the run along the batcher's grid.
                start, slot = due, 0
            first = None
            now = trio.current_time()
            if watch.batcher is not None and coalesced(watch):
                start = due = watch.batcher.next_due(due, now)
                slot = 0
                continue
            # Next slot on the fixed grid; skip slots already missed (with an
            # interval so small the count overflows, just poll again).
            missed = (now - start) / interval
            slot = max(slot + 1, math.ceil(missed) if math.isfinite(missed) else 0)
            due = start + slot * interval
            due += self.rng.uniform(0, spread) if spread else 0.0

    def _inline(self, watch: Watch, item: Mapping[str, Any], began: float) -> bool:
        """Answer a healthy poll from a page without waking the run's task.

        Only the plain case: the run is healthy, watched now, in no
        corruption episode, and no stall to judge; the ``polled`` event and
        the bookkeeping are those of `_poll`.  Anything else (or a malformed
        row) is left to the task: ``False``.
        """
        if (
            watch.recovered
            or self.policy.stall_timeout is not None
            or not self.is_current(watch)
        ):
            return False
        try:
            corrupted, checkpoint = read_listed(item)
        except Exception:
            return False
        if corrupted:
            return False
        self.telemetry.emit(
            "polled",
            watch.run_id,
            {
                **watch.metadata,
                "corrupted": False,
                "checkpoint": checkpoint,
                "via": "list",
            },
            duration=trio.current_time() - began,
        )
        self.observe(watch, False, began)
        return True

    async def _poll(
        self,
        watch: Watch,
        due: float,
        batcher: Batcher | None,
        answer: Answer | None = None,
        inline: Inline | None = None,
    ) -> tuple[bool, float]:
        """Poll once: whether the watch is over (run handed over), and when
        the poll was due.

        With a ``batcher``, the run is polled by its cycle at ``due`` (it
        may answer from a page, or say to GET the run; the polls ``inline``
        answers in place come and go without this returning, so the poll
        answered may be due later); ``answer``: the run as a page already
        listed it.  Otherwise it is polled with a GET now.
        """
        began = trio.current_time()
        run: TrainingRun | None = None
        error: Exception | None = None
        try:
            if answer is None and batcher is not None:
                answer, due = await batcher.ask(watch.run_id, due, inline)
                began = max(began, due)
            else:
                self.counts.polls += 1
            if isinstance(answer, Failed):
                error = answer.error
            elif answer is None or answer is FETCH:
                self.counts.gets += 1
                run = await watch.rest.get_training_run(watch.run_id)
                corrupted, via = run.corrupted, "get"
                last = run.last_checkpoint
                checkpoint = last.tinker_path if last is not None else None
            else:
                corrupted, checkpoint = read_listed(answer)
                via = "list"
                if corrupted and not watch.recovered:
                    # Structured only to hand it over: the executor needs it.
                    run = TrainingRun.from_json(answer)
        except Exception as exc:
            error = exc
        if error is not None:
            # Per-run failures become events; they never trigger recovery.
            if self.is_current(watch):
                self.telemetry.emit(
                    "poll_error",
                    watch.run_id,
                    {**watch.metadata, "error": error},
                    duration=trio.current_time() - began,
                )
                if watch.discovered and isinstance(error, NotFoundError):
                    self.gone(watch)
                    return True, due
            return False, due
        if not self.is_current(watch):
            return False, due
        self.telemetry.emit(
            "polled",
            watch.run_id,
            {
                **watch.metadata,
                "corrupted": corrupted,
                "checkpoint": checkpoint,
                "via": via,
            },
            duration=trio.current_time() - began,
        )
        self.observe(watch, corrupted, began)
        if self.policy.stall_timeout is not None:
            self._check_stall(watch, run, answer)
        if not corrupted:
            if watch.recovered:
                # A healthy poll ends the corruption episode.
                watch.recovered = False
                self.episode_over(watch)
            return False, due
        if watch.recovered or run is None:
            return False, due
        self.telemetry.emit(
            "detected",
            watch.run_id,
            {
                **watch.metadata,
                "strategy": str(self.policy.checkpoint_strategy),
                "checkpoint": checkpoint,
            },
        )
        crash_point("detected")
        return await self.hand_over(watch, run), due
