"""What the monitor knows about one watched run, and about ``monitor_all``."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._protocols import RestClientProtocol, ServiceProtocol
    from ._polling import Batcher, Discovery

__all__ = ["AllRuns", "Watch", "coalesced", "is_active", "request_time"]

logger = logging.getLogger("trio_tinkex_recovery")


@attrs.define(eq=False)
class Watch:
    """What the monitor knows about one watched run."""

    run_id: str
    service: ServiceProtocol | None
    rest: RestClientProtocol
    metadata: Mapping[str, Any]
    #: Restored already in its current corruption episode: a corrupted poll
    #: hands nothing over until a healthy poll ends the episode.
    recovered: bool = False
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: Coalesces this run's polls with others read through the same client.
    batcher: Batcher | None = None
    #: Found by ``monitor_all`` rather than named: a run the service no
    #: longer knows stops being watched.
    discovered: bool = False
    #: Whether a successor restored for it is watched (not after a stop).
    followed: bool = True
    #: Its ``last_request_time`` as last seen, and when (Trio time) it was
    #: first seen so; whether it is reported stalled now.
    request_time: dt.datetime | None = None
    moved_at: float = 0.0
    stalled: bool = False


@attrs.define(eq=False)
class AllRuns:
    """What `Monitor.monitor_all` watches, and what its sweeps found."""

    batcher: Batcher
    discovery: Discovery
    active_within: float
    recover_existing: bool
    #: Runs the sweeps listed that nobody watched yet, and those of them
    #: that were active (and so watched).
    listed: int = 0
    active: int = 0
    #: Whether a list of runs none of which is watched was logged.
    said_idle: bool = False

    def note(self, item: Mapping[str, Any]) -> bool:
        """Count a listed run; whether it is active (and so to be watched)."""
        self.listed += 1
        active = is_active(item, self.active_within)
        self.active += active
        return active

    def say_if_idle(self, watched: int) -> None:
        """Log, once, that the runs listed so far are none of them watched.

        ``watched``: how many runs the monitor watches now.
        """
        if self.said_idle or not self.listed or self.active or watched:
            return
        self.said_idle = True
        logger.warning(
            "monitor_all: the run list holds %d run(s), none of which handled "
            "a request within active_within=%s s: none is watched (they are "
            "as soon as they train again; active_within=math.inf watches "
            "every run)",
            self.listed,
            self.active_within,
        )


def coalesced(watch: Watch) -> bool:
    """Whether ``watch``'s polls go through its batcher now."""
    return watch.batcher is not None and watch.batcher.coalesces()


def is_active(item: Mapping[str, Any], active_within: float) -> bool:
    """Whether a listed run handled a request in the last ``active_within`` s.

    ``last_request_time`` is the service's wall-clock time, so it is
    compared with this machine's wall clock.  A span reaching back past the
    first date there is (``math.inf``, or ``1e12`` seconds) is no limit.
    """
    try:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=active_within)
    except OverflowError:
        return True  # Before year 1: every run is recent enough.
    when = request_time(item.get("last_request_time"))
    return when is not None and when >= since


def request_time(value: object) -> dt.datetime | None:
    """A listed run's ``last_request_time``, parsed (UTC when it names no
    zone); ``None`` when it is not an ISO 8601 time."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
