"""What the monitor knows about one watched run, and about ``monitor_all``."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._protocols import RestClientProtocol, ServiceProtocol
    from ._polling import Batcher, Discovery

__all__ = ["AllRuns", "Watch", "coalesced", "is_active"]


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


@attrs.frozen
class AllRuns:
    """What `Monitor.monitor_all` watches."""

    batcher: Batcher
    discovery: Discovery
    active_within: float
    recover_existing: bool


def coalesced(watch: Watch) -> bool:
    """Whether ``watch``'s polls go through its batcher now."""
    return watch.batcher is not None and watch.batcher.coalesces()


def is_active(item: Mapping[str, Any], active_within: float) -> bool:
    """Whether a listed run handled a request in the last ``active_within`` s.

    ``last_request_time`` is the service's wall-clock time, so it is
    compared with this machine's wall clock.
    """
    if math.isinf(active_within):
        return True
    value = item.get("last_request_time")
    if not isinstance(value, str):
        return False
    try:
        when = dt.datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when >= dt.datetime.now(dt.UTC) - dt.timedelta(seconds=active_within)
    except (ValueError, OverflowError):
        return False
