"""The one backoff formula: exponential, capped.

Both retry loops use it: the HTTP layer between attempts of one request
(``min(0.5·2^n, 10)`` seconds, as the official SDK), and the executor
between recovery attempts (``Policy.backoff_delay``).  Each applies its own
jitter on top.
"""

from __future__ import annotations

__all__ = ["backoff_delay"]

#: 2.0**64 outgrows any sensible cap, and a larger power could overflow.
_MAX_EXPONENT = 64


def backoff_delay(retries_taken: int, *, initial: float, maximum: float) -> float:
    """The delay before retry number ``retries_taken + 1``, without jitter.

    ``min(initial·2^retries_taken, maximum)``: ``initial`` before the first
    retry, doubling each time, never more than ``maximum``.  Defined (and
    finite) for any count, however large.
    """
    exponent = min(max(retries_taken, 0), _MAX_EXPONENT)
    return float(min(initial * 2.0**exponent, maximum))
