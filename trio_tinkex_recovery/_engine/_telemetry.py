"""Telemetry: events, subscribers that never stall the sender, statistics.

Every event goes three ways, synchronously and in order: it is counted, it
is logged under the ``trio_tinkex_recovery`` logger, and it is offered to
each subscriber's bounded buffer with ``send_nowait``.  A subscriber that
falls behind loses events (counted in ``statistics().dropped_events``); it
never delays a poll or a recovery.  Because emitting never checkpoints,
events of one run reach every subscriber in the order they happened.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

import attrs
import trio

from .._secrets import mask, mask_value
from .._text import printable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

__all__ = ["EVENT_NAMES", "EventName", "Statistics", "TelemetryEvent"]

logger = logging.getLogger("trio_tinkex_recovery")

EventName: TypeAlias = Literal[
    "polled",
    "detected",
    "poll_error",
    "started",
    "checkpoint_selected",
    "client_created",
    "completed",
    "failed",
    "exhausted",
    "interrupted",
    "stalled",
    "resumed",
]
#: Every event name, in the order a recovery emits them; then a stall's
#: (``stalled`` when a live run stops moving, ``resumed`` when it moves again).
EVENT_NAMES: tuple[EventName, ...] = get_args(EventName)

_LEVELS: dict[str, int] = {
    "polled": logging.DEBUG,
    "poll_error": logging.WARNING,
    "failed": logging.WARNING,
    "exhausted": logging.ERROR,
    "detected": logging.WARNING,
    "stalled": logging.WARNING,
}
# Metadata entries worth a place in a log line, in this order.
_LOGGED = ("attempt", "strategy", "checkpoint", "new_run_id", "delay", "error")

#: How many events a subscriber's buffer holds before it drops.
DEFAULT_BUFFER = 1024


def describe(value: object) -> str:
    """A short, safe text for a metadata value (errors as ``Type: message``)."""
    if isinstance(value, BaseException):
        text = str(value)
        return f"{type(value).__name__}: {text}" if text else type(value).__name__
    if isinstance(value, str | int | float | bool) or value is None:
        return str(value)
    model_id = getattr(value, "model_id", None)
    if isinstance(model_id, str):
        return f"<{type(value).__name__} model_id={model_id}>"
    return f"<{type(value).__name__}>"


@attrs.frozen
class TelemetryEvent:
    """One thing that happened to one run."""

    #: What happened: one of `EVENT_NAMES`.
    name: EventName
    #: The run it happened to.
    run_id: str
    #: When, in Trio time (``trio.current_time()``).
    time: float
    #: Numbers, e.g. ``{"attempt": 2}`` or ``{"delay": 10.0}``.
    measurements: Mapping[str, float] = attrs.field(factory=dict)
    #: The run's user metadata merged with ``run_id``, ``attempt``,
    #: ``strategy`` and, where they apply, ``checkpoint``, ``error``, ``client``.
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def event(self) -> tuple[str, str, str]:
        """The tinkex event name, ``("tinkex", "recovery", name)``."""
        return ("tinkex", "recovery", self.name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; non-JSON metadata values become short texts."""
        return {
            "event": list(self.event),
            "name": self.name,
            "run_id": self.run_id,
            "time": self.time,
            "measurements": dict(self.measurements),
            "metadata": {
                key: value
                if isinstance(value, str | int | float | bool) or value is None
                else describe(value)
                for key, value in self.metadata.items()
            },
        }


@attrs.frozen
class Statistics:
    """Counters of a monitor or executor at one moment."""

    #: Runs being polled now.
    monitored: int = 0
    #: Polls started.
    polls: int = 0
    #: Polls that Tinker answered (``polled`` events).
    polled: int = 0
    #: Polls that failed (``poll_error`` events).
    poll_errors: int = 0
    #: API requests sent to poll runs one at a time (``GET`` of one run).
    get_requests: int = 0
    #: API requests sent to poll many runs at once (pages of the run list).
    list_requests: int = 0
    #: Sweeps of the run list cut short because its pages did not bear out
    #: the count it claimed (an empty page, a page of runs listed already,
    #: or the page cap of ``open_monitor(max_list_pages=...)``).
    list_lies: int = 0
    #: Corrupted runs detected.
    detected: int = 0
    #: Recovery attempts started.
    attempts: int = 0
    #: Recoveries that completed.
    completed: int = 0
    #: Attempts that failed.
    failed: int = 0
    #: Recoveries that gave up.
    exhausted: int = 0
    #: Recoveries cut short by cancellation (neither completed nor exhausted).
    interrupted: int = 0
    #: Recoveries queued, attempting or waiting to retry.
    in_progress: int = 0
    #: Events a slow subscriber lost.
    dropped_events: int = 0
    #: Runs ``monitor_all`` found already corrupted and left unrestored.
    existing_corrupted: int = 0
    #: Runs this replica holds a lease on (a store shared by replicas).
    leases_held: int = 0
    #: Replicas alive on the shared store, this one included (0: no replicas).
    replicas: int = 0
    #: Watched runs stalled now (``Policy.stall_timeout``).
    stalled: int = 0
    #: Stalls reported (``stalled`` events).
    stalls: int = 0


class Telemetry:
    """The fan-out point of events: counts, logs, offers to subscribers."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[TelemetryEvent]] = set()
        self.counts: Counter[str] = Counter()
        self.dropped = 0

    def emit(
        self,
        name: EventName,
        run_id: str,
        metadata: Mapping[str, Any],
        **measurements: float,
    ) -> TelemetryEvent:
        """Record an event now.  Never blocks, never checkpoints.

        Every string in the event, and the text of every error in it, is
        masked against the configured API keys (`mask_value`) whatever
        produced it: a caller's own service may name the key in an error.
        """
        run_id = mask(run_id)
        event = TelemetryEvent(
            name=name,
            run_id=run_id,
            time=trio.current_time(),
            measurements=measurements,
            metadata={
                **{key: mask_value(value) for key, value in metadata.items()},
                "run_id": run_id,
            },
        )
        self.counts[name] += 1
        level = _LEVELS.get(name, logging.INFO)
        if logger.isEnabledFor(level):
            details = " ".join(
                f"{key}={describe(event.metadata[key])}"
                for key in _LOGGED
                if event.metadata.get(key) is not None
            )
            # Ids, paths and errors come from a server: no escape sequence
            # or newline of theirs reaches a log line.
            logger.log(
                level,
                "recovery %s run_id=%s %s",
                name,
                printable(run_id),
                printable(details),
            )
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)
        return event

    @asynccontextmanager
    async def subscribe(
        self, max_buffer: int = DEFAULT_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[TelemetryEvent]]:
        """Receive every event from now until the block ends."""
        if (
            isinstance(max_buffer, bool)
            or not isinstance(max_buffer, int)
            or max_buffer < 1
        ):
            raise ValueError(f"max_buffer must be an int ≥ 1, got {max_buffer!r}")
        send, receive = trio.open_memory_channel[TelemetryEvent](max_buffer)
        self._subscribers.add(send)
        await trio.lowlevel.checkpoint()
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
