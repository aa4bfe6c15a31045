"""A global test mode for the native client, as stamina's ``set_testing``.

Tests of code that uses the client want exact or short waits and no
background requests they did not make; they should not reach into private
settings for that.  `set_testing` switches the mode on for the whole
process (tests run one at a time) and hands back a context manager that
restores the previous mode, for tests that want it for a block only.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import attrs

from ._validators import check_number

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["is_testing", "set_testing"]


@attrs.frozen(kw_only=True)
class _Mode:
    jitter: bool
    max_delay: float | None
    heartbeat_interval: float | None


#: The mode in force; ``None`` outside tests.
_current: _Mode | None = None


class _Restore(contextlib.AbstractContextManager[None]):
    """Puts back the mode that was in force before `set_testing`."""

    # The mode is process-wide by design, hence the globals below.

    def __init__(self, previous: _Mode | None) -> None:
        self._previous = previous

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _current
        _current = self._previous


def set_testing(
    testing: bool,
    *,
    jitter: bool = False,
    max_delay: float | None = None,
    heartbeat_interval: float | None = None,
) -> contextlib.AbstractContextManager[None]:
    """Switch the native client's test mode on or off, for the whole process.

    In test mode:

    - HTTP retry delays are exact, ``min(0.5·2^n, 10)`` seconds, without
      their random jitter (``jitter=True`` keeps it), so tests under Trio's
      ``MockClock`` can assert exact times;
    - with ``max_delay``, no wait of the client (a retry delay, a server's
      ``Retry-After``, the pause between two ``retrieve_future`` polls) is
      longer than ``max_delay`` seconds: for tests over real sockets;
    - a service client's session heartbeat runs every
      ``heartbeat_interval`` seconds, or not at all when it is ``None``
      (the default), so the service sees only the requests a test makes.

    The recovery `Policy` is not affected: pass ``Policy(jitter=0)`` for
    exact polls and recovery backoff.

    Use it as a statement (``set_testing(True)``, e.g. in a fixture) or as
    a context manager (``with set_testing(True): ...``) that restores the
    previous mode when the block ends.

    Args:
        testing: Whether test mode is on; ``False`` restores normal behaviour.
        jitter: Keep the random jitter of HTTP retry delays.
        max_delay: The longest the client ever waits between two requests
            of one operation, in seconds (≥ 0); ``None``: no limit.
        heartbeat_interval: Seconds between two session heartbeats (> 0);
            ``None``: no heartbeat.

    Returns:
        A context manager that puts back the previous mode on exit.

    Raises:
        TypeError: An argument is of the wrong type.
        ValueError: ``max_delay`` or ``heartbeat_interval`` is out of range.
    """
    global _current
    if max_delay is not None:
        check_number("max_delay", max_delay, minimum=0)
    if heartbeat_interval is not None:
        check_number("heartbeat_interval", heartbeat_interval, minimum=0, strict=True)
    previous = _current
    _current = (
        _Mode(
            jitter=bool(jitter),
            max_delay=max_delay,
            heartbeat_interval=heartbeat_interval,
        )
        if testing
        else None
    )
    return _Restore(previous)


def is_testing() -> bool:
    """Whether `set_testing` has switched test mode on."""
    return _current is not None


def jitter_enabled() -> bool:
    """Whether HTTP retry delays get their random jitter."""
    return _current is None or _current.jitter


def limit_delay(delay: float) -> float:
    """``delay``, shortened to the test mode's ``max_delay`` if there is one."""
    if _current is None or _current.max_delay is None:
        return delay
    return min(delay, _current.max_delay)


def heartbeat_interval(default: float) -> float | None:
    """Seconds between session heartbeats (``default`` outside test mode).

    ``None``: no heartbeat.
    """
    return default if _current is None else _current.heartbeat_interval
