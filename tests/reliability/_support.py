"""Shared helpers of the reliability tests: fault mixes, models, recorders."""

from __future__ import annotations

import json
import logging
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.lowlevel

from trio_tinkex_recovery import Config, open_service_client, set_testing
from trio_tinkex_recovery.testing import Fault, send_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

    import httpx

    from trio_tinkex_recovery import ServiceClient, TelemetryEvent
    from trio_tinkex_recovery.testing import FakeTinker, RecordedRequest

#: A recognisable fake key: no test output may ever show it.
KEY = "tml-CANARY-d3adb33f-never-print-me"
#: A base URL for in-process clients (nothing is sent over a network).
BASE = "https://tinker.test"
#: `set_testing` options: retries without long waits, for real-time
#: (loopback) tests.
FAST: Mapping[str, Any] = {"max_delay": 0.02}
#: `set_testing` options: exact, jitter-free delays, for MockClock tests.
EXACT: Mapping[str, Any] = {}

TRAINING_RUN_PREFIX = "/api/v1/training_runs/"

#: Fault kinds the client sees as a failed response it may retry.
RETRIED_KINDS = frozenset({"status", "drop", "latency"})
#: Fault kinds that spoil a 200 answer: never retried by the HTTP layer.
SPOILT_KINDS = frozenset({"malformed", "truncated", "missing_fields"})


def chaos_faults(*, timeout: float | None) -> list[Fault]:
    """One fault of each kind the issue lists.

    Args:
        timeout: The client's per-request timeout; a latency fault then
            outlasts it (a timeout).  ``None``: no latency fault (in-process
            transports enforce no timeout).
    """
    faults = [
        Fault.server_error(503),
        Fault.server_error(500),
        Fault.rate_limit(0.05),
        Fault.request_timeout(),
        Fault.drop(after_action=True),
        Fault.drop(after_action=False),
        Fault.malformed(),
        Fault.truncated(),
        Fault.missing_fields(),
    ]
    if timeout is not None:
        faults.append(Fault.latency(timeout * 3))
    return faults


def inject(fake: FakeTinker, faults: list[Fault], total_rate: float) -> None:
    """Make ``faults`` strike ``total_rate`` of all requests, evenly split.

    The simulator tries its rates in order and applies the first that fires,
    so each rate is the conditional probability that keeps the split even.
    """
    each = total_rate / len(faults)
    for index, fault in enumerate(faults):
        fake.add_fault_rate(fault, each / (1 - index * each))


def is_poll(request: RecordedRequest) -> bool:
    """Whether a request is a monitor poll: ``GET /api/v1/training_runs/{id}``."""
    if request.method != "GET" or not request.path.startswith(TRAINING_RUN_PREFIX):
        return False
    return "/" not in request.path[len(TRAINING_RUN_PREFIX) :]


def poll_run_id(request: RecordedRequest) -> str:
    return request.path[len(TRAINING_RUN_PREFIX) :]


def expected_poll_errors(
    requests: Iterable[RecordedRequest], *, max_retries: int, timeouts: bool
) -> int:
    """How many polls must have failed, replaying the client's retry rules.

    A run's polls are sequential, so its requests split into polls: a
    retryable fault (status, drop, timeout) is retried until ``max_retries``
    retries are spent; a spoilt 200 answer fails the poll at once.

    Args:
        requests: The simulator's request log.
        max_retries: The polling client's ``Config.max_retries``.
        timeouts: Whether a latency fault is a timeout (loopback) or only
            a late answer (in process).
    """
    retries: Counter[str] = Counter()
    failed = 0
    for request in filter(is_poll, requests):
        run_id = poll_run_id(request)
        kind = request.fault
        if kind == "latency" and not timeouts:
            kind = None
        if kind is None:
            retries[run_id] = 0
        elif kind in SPOILT_KINDS or retries[run_id] >= max_retries:
            failed += 1
            retries[run_id] = 0
        else:
            retries[run_id] += 1
    return failed


@asynccontextmanager
async def service_client(
    fake: FakeTinker | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    base_url: str = BASE,
    settings: Mapping[str, Any] = EXACT,
    heartbeat_interval: float | None = None,
    **config: Any,
) -> AsyncIterator[ServiceClient]:
    """A native service client: in process over ``fake`` (or ``transport``),
    or over the network to ``base_url``, in test mode (``settings`` are
    more `set_testing` options)."""
    if transport is None and fake is not None:
        transport = fake.transport()
    with set_testing(True, heartbeat_interval=heartbeat_interval, **settings):
        async with open_service_client(
            Config(api_key=KEY, base_url=base_url, **config), transport=transport
        ) as service:
            yield service


@attrs.define
class Recorder:
    """Every event of a subscription, kept by a task in a caller's nursery.

    Poll outcomes (``polled``) are left out unless ``polls`` is true.
    """

    events: list[TelemetryEvent] = attrs.field(factory=list)
    polls: bool = False
    changed: trio.Event = attrs.field(factory=trio.Event)
    #: When each run's latest finished poll began (from ``polled``/``poll_error``).
    poll_began: dict[str, float] = attrs.field(factory=dict)

    async def run(
        self,
        source: Any,
        *,
        max_buffer: int = 1_000_000,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Record ``source.subscribe()`` until cancelled (use ``nursery.start``)."""
        async with source.subscribe(max_buffer) as events:
            task_status.started()
            async for event in events:
                if event.name in ("polled", "poll_error"):
                    began = event.time - event.measurements["duration"]
                    self.poll_began[event.run_id] = began
                if event.name == "polled" and not self.polls:
                    self.changed.set()
                    self.changed = trio.Event()
                    continue
                self.events.append(event)
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, condition: Callable[[list[TelemetryEvent]], bool]) -> None:
        """Return once ``condition(events)`` holds."""
        while not condition(self.events):
            await self.changed.wait()

    async def wait_all_polled_since(
        self, since: float, runs: Callable[[], Iterable[str]]
    ) -> None:
        """Return once every run in ``runs()`` finished a poll begun after ``since``."""
        while any(self.poll_began.get(r, -1.0) <= since for r in runs()):
            await self.changed.wait()

    def names(self, run_id: str | None = None) -> list[str]:
        return [e.name for e in self.events if run_id is None or e.run_id == run_id]

    def count(self, name: str) -> int:
        return sum(e.name == name for e in self.events)


def live_tasks(fragment: str) -> list[trio.lowlevel.Task]:
    """Tasks of this Trio run whose name contains ``fragment``."""
    found: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if fragment in task.name:
            found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


class LogCapture(logging.Handler):
    """A logging handler keeping every record, formatted, exceptions included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


ASGIApp = Any
Reply = tuple[int, dict[str, Any]]


class Intercept:
    """ASGI middleware: answer or observe chosen requests before the simulator.

    ``handler(method, path, body)`` returns a reply ``(status, json)`` to
    answer the request itself, or ``None`` to pass it on unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        handler: Callable[[str, str, Any], Awaitable[Reply | None]],
    ) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        reply = await self.handler(scope["method"], scope["path"], body)
        if reply is None:
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if replayed:
                    await trio.sleep_forever()
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}

            await self.app(scope, replay, send)
            return
        status, payload = reply
        await send_json(send, status, payload)

    def transport(self) -> httpx.ASGITransport:
        import httpx

        return httpx.ASGITransport(app=self)
