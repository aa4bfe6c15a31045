"""What reaches the simulator: the request log, its counters, the faults.

`Traffic` is the part of the simulator's state about requests rather than
about the service: it records requests (`record`, `requests`) and holds the
faults waiting for them (`script`, `add_fault_rate`).  `TinkerState`
builds on it.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING

from ._faults import Fault, FaultPlan

if TYPE_CHECKING:
    from ._records import RecordedRequest

__all__ = ["DEFAULT_REQUEST_LOG_LIMIT", "Traffic"]

#: How many requests the request log keeps unless told otherwise: a
#: simulator serving a large fleet for long would otherwise grow by about
#: 1.7 KB a request.
DEFAULT_REQUEST_LOG_LIMIT = 10_000


class Traffic:
    """The request log and the faults of a simulator.

    Args:
        seed: Seeds the ``random.Random`` that decides rate-based faults.
        request_log_limit: Keep only the latest this many requests in
            `requests` (default `DEFAULT_REQUEST_LOG_LIMIT`, 10,000;
            ``None``: keep all); `requests_received` still counts every one.

    Attributes:
        faults: The scripted faults and fault rates.
        requests_received: How many requests arrived (admin ones excepted).
        idempotent_replays: How many requests were answered from the
            ``X-Idempotency-Key`` cache instead of acting again.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        request_log_limit: int | None = DEFAULT_REQUEST_LOG_LIMIT,
    ) -> None:
        if request_log_limit is not None and request_log_limit < 0:
            raise ValueError(f"request_log_limit must be >= 0, got {request_log_limit}")
        self.faults = FaultPlan(random.Random(seed))
        self.requests_received = 0
        self.idempotent_replays = 0
        self._requests: deque[RecordedRequest] = deque(maxlen=request_log_limit)

    def record(self, request: RecordedRequest) -> None:
        """Count a request and add it to the request log."""
        self.requests_received += 1
        self._requests.append(request)

    @property
    def request_log_limit(self) -> int | None:
        """How many requests `requests` keeps (``None``: all)."""
        return self._requests.maxlen

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received, in order (the latest ``request_log_limit``).

        Admin ``/_fake/`` requests are not recorded.
        """
        return list(self._requests)

    def request_count(
        self, *, method: str | None = None, path: str | None = None
    ) -> int:
        """How many logged requests match ``method`` and the ``path`` prefix.

        Counts the requests the log keeps (the latest ``request_log_limit``).
        """
        return sum(
            1
            for r in self._requests
            if (method is None or r.method == method.upper())
            and (path is None or r.path.startswith(path))
        )

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._requests.clear()

    # ------------------------------------------------------------------
    # Faults

    def script(self, *faults: Fault) -> None:
        """Queue faults: each strikes the next request it matches, once."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        self.faults.script.extend(faults)

    def add_fault_rate(self, fault: Fault, rate: float) -> None:
        """Make ``fault`` strike each matching request with probability ``rate``.

        Raises:
            ValueError: ``rate`` is not between 0 and 1.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        self.faults.add_rate(fault, rate)

    def clear_faults(self) -> None:
        """Drop every scripted fault and every fault rate."""
        self.faults.clear()
