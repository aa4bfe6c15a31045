"""Faults the simulator can inject: what goes wrong, and for which requests.

A `Fault` describes one misbehaviour for one request.  The simulator takes
faults from two sources, in this order:

1. a *script*: a queue of faults, each consumed by the next request it
   matches (``FakeTinker.script(...)``);
2. *rates*: each rule fires on a matching request with a probability drawn
   from the simulator's seeded ``random.Random`` (``FakeTinker.add_fault_rate``).

At most one fault applies to a request.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Literal

import attrs

from .._validators import check_number

if TYPE_CHECKING:
    import random

__all__ = ["Fault", "FaultKind"]

#: The kinds of fault the simulator can inject.
FaultKind = Literal[
    "latency", "status", "drop", "malformed", "truncated", "missing_fields"
]

#: Kinds that spoil a response the server already produced (it has acted).
_AFTER_ACTION_KINDS = frozenset({"malformed", "truncated", "missing_fields"})


def _check_status(status: int) -> int:
    check_number("status", status, minimum=400, below=600, integer=True)
    return status


def _check_seconds(name: str, value: float) -> float:
    check_number(name, value, minimum=0)
    return float(value)


@attrs.frozen
class Fault:
    """One misbehaviour of the simulator, for one matching request.

    Build faults with the class methods (`Fault.latency`, `Fault.server_error`,
    `Fault.rate_limit`, `Fault.request_timeout`, `Fault.status_code`,
    `Fault.drop`, `Fault.malformed`, `Fault.truncated`,
    `Fault.missing_fields`) rather than the constructor.
    """

    #: What goes wrong.
    kind: FaultKind
    #: The HTTP status answered, for ``"status"`` faults.
    status: int | None = None
    #: Seconds (Trio time) to wait before answering, for ``"latency"`` faults.
    delay: float = 0.0
    #: The ``Retry-After`` value sent with a ``"status"`` fault, in seconds.
    retry_after: float | None = None
    #: The top-level JSON fields removed by a ``"missing_fields"`` fault;
    #: empty means the first field of the object.
    fields: tuple[str, ...] = ()
    #: Only requests with this HTTP method match (``None``: any method).
    method: str | None = None
    #: Only requests whose path starts with this prefix match
    #: (``None``: any path), e.g. ``"/api/v1/training_runs"``.
    path: str | None = None
    #: For ``"drop"`` faults: whether the server acts on the request before
    #: the connection drops (a lost response) or not (a lost request).
    after_action: bool = False

    def matches(self, method: str, path: str) -> bool:
        """Tell whether this fault applies to a request."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or path.startswith(self.path)

    @property
    def acts_first(self) -> bool:
        """Whether the server handles the request before the fault strikes."""
        return self.kind in _AFTER_ACTION_KINDS or (
            self.kind == "drop" and self.after_action
        )

    @classmethod
    def latency(
        cls, seconds: float, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        """Delay the answer by ``seconds`` of Trio time (works with MockClock).

        Raises:
            ValueError: ``seconds`` is negative.
        """
        return cls(
            "latency",
            delay=_check_seconds("seconds", seconds),
            method=method,
            path=path,
        )

    @classmethod
    def status_code(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """Answer with an HTTP error ``status`` (and a JSON error body).

        The server does not act on the request.

        Raises:
            ValueError: ``status`` is not 400-599, or ``retry_after`` is negative.
        """
        if retry_after is not None:
            retry_after = _check_seconds("retry_after", retry_after)
        return cls(
            "status",
            status=_check_status(status),
            retry_after=retry_after,
            method=method,
            path=path,
        )

    @classmethod
    def server_error(
        cls, status: int = 503, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        """Answer with a 5xx error (503 unless told otherwise).

        Raises:
            ValueError: ``status`` is not 500-599.
        """
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx status, got {status}")
        return cls.status_code(status, method=method, path=path)

    @classmethod
    def rate_limit(
        cls,
        retry_after: float = 1.0,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """Answer 429 Too Many Requests with ``Retry-After: retry_after``."""
        return cls.status_code(429, retry_after=retry_after, method=method, path=path)

    @classmethod
    def request_timeout(
        cls, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        """Answer 408 Request Timeout."""
        return cls.status_code(408, method=method, path=path)

    @classmethod
    def drop(
        cls,
        *,
        after_action: bool = True,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """Close the connection without an answer.

        With ``after_action`` (the default) the server acts first, so the
        client loses the response of an operation that did happen: the case
        idempotency keys exist for.  In process, the transport raises
        ``httpx.RemoteProtocolError``; over loopback, the client sees the
        server disconnect without a response.
        """
        return cls("drop", after_action=after_action, method=method, path=path)

    @classmethod
    def malformed(cls, *, method: str | None = None, path: str | None = None) -> Fault:
        """Act, then answer 200 with a body that is not JSON at all."""
        return cls("malformed", method=method, path=path)

    @classmethod
    def truncated(cls, *, method: str | None = None, path: str | None = None) -> Fault:
        """Act, then answer 200 with the JSON body cut in half."""
        return cls("truncated", method=method, path=path)

    @classmethod
    def missing_fields(
        cls, *fields: str, method: str | None = None, path: str | None = None
    ) -> Fault:
        """Act, then answer 200 with ``fields`` removed from the JSON object.

        Without ``fields``, the object's first field is removed.
        """
        return cls("missing_fields", fields=tuple(fields), method=method, path=path)


@attrs.define(eq=False)
class FaultPlan:
    """The faults waiting for requests: a script and a list of rates."""

    rng: random.Random
    script: deque[Fault] = attrs.field(factory=deque)
    rates: list[tuple[Fault, float]] = attrs.field(factory=list)

    def add_rate(self, fault: Fault, rate: float) -> None:
        """Make ``fault`` strike matching requests with probability ``rate``."""
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(f"rate must be a number, got {type(rate).__name__}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {rate}")
        self.rates.append((fault, float(rate)))

    def pick(self, method: str, path: str) -> Fault | None:
        """The fault for a request: the first matching scripted one, else a rate."""
        for index, fault in enumerate(self.script):
            if fault.matches(method, path):
                del self.script[index]
                return fault
        for fault, rate in self.rates:
            if fault.matches(method, path) and self.rng.random() < rate:
                return fault
        return None

    def clear(self) -> None:
        """Forget every scripted fault and every rate."""
        self.script.clear()
        self.rates.clear()
