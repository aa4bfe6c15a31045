"""Prometheus metrics and health probes for a monitor (the ``metrics`` extra).

`serve_metrics` serves one monitor's metrics on ``/metrics`` with
``/healthz`` and ``/readyz`` probes, from a task in your nursery::

    import functools
    import trio
    from trio_tinkex_recovery import Policy, open_monitor
    from trio_tinkex_recovery.metrics import serve_metrics

    async with open_monitor(policy=Policy(enabled=True), config=config) as monitor:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(serve_metrics, monitor, port=9464)
            )
            await monitor.monitor_run("run-1")

`attach_metrics` only keeps the metrics on a ``prometheus_client``
registry (yours, or its own), for an application that exposes them itself::

    registry = prometheus_client.CollectorRegistry()
    metrics = await nursery.start(attach_metrics, monitor, registry)

Every name starts with ``tinkex_recovery_``.  Counters and gauges the
monitor's ``statistics()`` holds are read from it at scrape time, so they
stay exact even when the subscriber loses events; the poll-duration and
recovery-duration histograms, the count of successful polls and the probes
are fed by a telemetry subscriber, which drops events rather than slow
polling down (the drops are ``dropped_events_total``).  No label carries a
run id, the API key or text from the server: the number of series does not
grow with the number of runs.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Final, final

import attrs
import trio

try:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_tinkex_recovery.metrics needs prometheus-client: "
        "pip install 'trio-tinkex-recovery[metrics]'"
    ) from exc

from ._asgi import bind_socket, lifespan, serve_asgi
from ._engine._telemetry import DEFAULT_BUFFER
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from prometheus_client.metrics_core import Metric

    from ._asgi import Receive, Scope, Send
    from ._engine._monitor import Monitor
    from ._engine._telemetry import Statistics, TelemetryEvent
    from ._notify import Notifier

__all__ = ["MonitorMetrics", "Probe", "attach_metrics", "serve_metrics"]

logger = logging.getLogger("trio_tinkex_recovery.metrics")

#: The prefix of every metric name.
PREFIX: Final = "tinkex_recovery_"
#: Bucket bounds of ``poll_duration_seconds``: 10 ms to 60 s.
POLL_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Bucket bounds of ``recovery_duration_seconds``: 100 ms to 30 min.
RECOVERY_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800,
)  # fmt: skip
#: ``/healthz`` fails after this many poll intervals without an answered poll.
HEALTHY_INTERVALS: Final = 3


@attrs.frozen
class Probe:
    """The answer of a health or readiness probe."""

    #: Whether the probe passes (HTTP 200) or fails (HTTP 503).
    ok: bool
    #: Why, in one line for people.
    reason: str


@final
class MonitorMetrics(metaclass=NoPublicConstructor):
    """The metrics and probes of one monitor.

    Handed out by `attach_metrics` (through ``nursery.start``); it has no
    public constructor.  Use it from the Trio thread.
    """

    _factory_hint = "use nursery.start(attach_metrics, monitor)"

    def __init__(
        self,
        monitor: Monitor,
        registry: CollectorRegistry | None,
        notifiers: Sequence[Notifier] = (),
    ) -> None:
        self._monitor = monitor
        self._notifiers = tuple(notifiers)
        self._registry = CollectorRegistry() if registry is None else registry
        # Attaching counts as a fresh start for /healthz.
        self._last_poll = trio.current_time()
        self._polled_runs: set[str] = set()
        self._detected_at: dict[str, float] = {}
        self._poll_duration = Histogram(
            f"{PREFIX}poll_duration_seconds",
            "Seconds a poll took, failed ones included.",
            buckets=POLL_BUCKETS,
            registry=None,
        )
        self._recovery_duration = Histogram(
            f"{PREFIX}recovery_duration_seconds",
            "Seconds from detecting a corrupted run to its completed recovery.",
            buckets=RECOVERY_BUCKETS,
            registry=None,
        )
        self._collector = _Collector(self)
        self._registry.register(self._collector)

    def __repr__(self) -> str:
        return f"<MonitorMetrics of {self._monitor!r}>"

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics are on."""
        return self._registry

    def health(self) -> Probe:
        """Whether polls are answered (``/healthz``).

        Fails when runs are watched but no poll was answered within three
        poll intervals, counted from attaching at first.  A poll that
        fails (``poll_error``) is no answer.
        """
        watched = self._monitor.statistics().monitored
        if not watched:
            return Probe(ok=True, reason="no runs watched")
        window = HEALTHY_INTERVALS * self._monitor.policy.poll_interval
        quiet = trio.current_time() - self._last_poll
        if quiet > window:
            return Probe(
                ok=False,
                reason=f"no poll answered for {quiet:.1f} s "
                f"({HEALTHY_INTERVALS} poll intervals: {window:g} s); "
                f"{watched} runs watched",
            )
        return Probe(ok=True, reason=f"last poll answered {quiet:.1f} s ago")

    def readiness(self) -> Probe:
        """Whether every watched run has been polled (answered) once (``/readyz``)."""
        watched = self._monitor.monitored_runs
        self._polled_runs &= watched
        waiting = len(watched) - len(self._polled_runs)
        if waiting:
            return Probe(
                ok=False,
                reason=f"{waiting} of {len(watched)} watched runs not polled yet",
            )
        return Probe(ok=True, reason=f"all {len(watched)} watched runs polled")

    async def _follow(self, *, task_status: trio.TaskStatus[MonitorMetrics]) -> None:
        """Observe the monitor's events until cancelled; then leave the registry."""
        try:
            async with self._monitor.subscribe(DEFAULT_BUFFER) as events:
                task_status.started(self)
                async for event in events:
                    self._observe(event)
        finally:
            self._registry.unregister(self._collector)

    def _observe(self, event: TelemetryEvent) -> None:
        name = event.name
        if name == "polled" or name == "poll_error":
            duration = event.measurements.get("duration")
            if duration is not None:
                self._poll_duration.observe(duration)
            if name == "polled":
                self._last_poll = max(self._last_poll, event.time)
                self._polled_runs.add(event.run_id)
        elif name == "detected":
            self._detected_at[event.run_id] = event.time
        elif name == "completed":
            detected = self._detected_at.pop(event.run_id, None)
            if detected is not None:
                self._recovery_duration.observe(event.time - detected)
        elif name in ("exhausted", "interrupted"):
            self._detected_at.pop(event.run_id, None)

    def _families(self, stats: Statistics | None) -> Iterator[Metric]:
        """Every metric; with ``stats=None`` only their names and types."""

        def counter(name: str, text: str, label: str = "") -> CounterMetricFamily:
            return CounterMetricFamily(
                f"{PREFIX}{name}", text, labels=[label] if label else None
            )

        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}{name}", text)

        polls = counter("polls_total", "Polls that ended, by outcome.", "outcome")
        requests = counter(
            "api_requests_total", "API requests polls cost, by kind.", "kind"
        )
        lies = counter(
            "list_lies_total",
            "Sweeps of the run list cut short: its pages did not hold the runs "
            "it claimed.",
        )
        detected = counter("detected_total", "Corrupted runs detected.")
        attempts = counter("recovery_attempts_total", "Recovery attempts started.")
        recoveries = counter(
            "recoveries_total", "Recoveries that ended, by outcome.", "outcome"
        )
        watched = gauge("watched_runs", "Runs being polled.")
        in_progress = gauge(
            "recoveries_in_progress", "Recoveries queued, attempting or waiting."
        )
        dropped = counter(
            "dropped_events_total", "Telemetry events slow subscribers lost."
        )
        notifications = counter(
            "notifications_total",
            "Notifications (--notify) that ended, by outcome: sent, failed "
            "(given up on) or dropped (the queue was full).",
            "outcome",
        )
        notification_retries = counter(
            "notification_retries_total", "Notification requests sent again."
        )
        stalled = gauge("stalled_runs", "Watched runs stalled now.")
        stalls = counter("stalls_total", "Stalls of watched runs reported.")
        if stats is not None:
            polls.add_metric(["ok"], stats.polled)
            polls.add_metric(["error"], stats.poll_errors)
            requests.add_metric(["get"], stats.get_requests)
            requests.add_metric(["list"], stats.list_requests)
            lies.add_metric([], stats.list_lies)
            detected.add_metric([], stats.detected)
            attempts.add_metric([], stats.attempts)
            recoveries.add_metric(["completed"], stats.completed)
            recoveries.add_metric(["exhausted"], stats.exhausted)
            recoveries.add_metric(["interrupted"], stats.interrupted)
            watched.add_metric([], stats.monitored)
            in_progress.add_metric([], stats.in_progress)
            dropped.add_metric([], stats.dropped_events)
            told = [notifier.statistics() for notifier in self._notifiers]
            for outcome in ("sent", "failed", "dropped"):
                total = sum(getattr(one, outcome) for one in told)
                notifications.add_metric([outcome], total)
            notification_retries.add_metric([], sum(one.retries for one in told))
            stalled.add_metric([], stats.stalled)
            stalls.add_metric([], stats.stalls)
        yield from (polls, requests, lies, detected, attempts, recoveries)
        yield from (watched, in_progress, dropped, stalled, stalls)
        yield from (notifications, notification_retries)
        for histogram in (self._poll_duration, self._recovery_duration):
            yield from histogram.describe() if stats is None else histogram.collect()


@attrs.frozen(eq=False)
class _Collector:
    """What the registry calls at scrape time."""

    metrics: MonitorMetrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics._families(self.metrics._monitor.statistics())

    def describe(self) -> Iterator[Metric]:
        return self.metrics._families(None)


async def attach_metrics(
    monitor: Monitor,
    registry: CollectorRegistry | None = None,
    *,
    notifiers: Sequence[Notifier] = (),
    task_status: trio.TaskStatus[MonitorMetrics] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``monitor``'s metrics on ``registry`` until cancelled.

    Start it with ``nursery.start``, which returns the `MonitorMetrics`::

        async with trio.open_nursery() as nursery:
            metrics = await nursery.start(attach_metrics, monitor, registry)
            print(prometheus_client.generate_latest(metrics.registry).decode())

    The metrics leave the registry when the task ends, so the registry can
    take another monitor's then.  Recovery durations are observed for the
    recoveries whose events reach the monitor's subscribers: all of them
    with the monitor's own executor, none with an executor of your own.

    Args:
        monitor: The monitor to measure.
        registry: Where the metrics go; by default a new
            ``prometheus_client.CollectorRegistry`` (`MonitorMetrics.registry`).
        notifiers: The monitor's notifiers (`~trio_tinkex_recovery.notify`),
            counted in ``notifications_total`` and
            ``notification_retries_total``.
        task_status: Reports the `MonitorMetrics`.

    Raises:
        ValueError: ``registry`` already has metrics of these names, e.g.
            another monitor's (a registry holds one monitor's metrics).
    """
    metrics = MonitorMetrics._create(monitor, registry, notifiers)
    await metrics._follow(task_status=task_status)


async def serve_metrics(
    monitor: Monitor,
    *,
    host: str = "127.0.0.1",
    port: int,
    registry: CollectorRegistry | None = None,
    notifiers: Sequence[Notifier] = (),
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``monitor``'s metrics and probes over HTTP until cancelled.

    ``GET /metrics`` answers in the Prometheus text format; ``/healthz`` and
    ``/readyz`` answer 200 or 503 with a one-line reason
    (`MonitorMetrics.health`, `MonitorMetrics.readiness`).  Start it with
    ``nursery.start``, in a nursery inside the monitor's ``async with``
    block; it returns the base URL with the port actually bound::

        url = await nursery.start(functools.partial(serve_metrics, monitor, port=0))

    Needs the ``metrics`` extra (prometheus-client and hypercorn).

    Args:
        monitor: The monitor to measure.
        host: The address to bind.  The default serves this machine only;
            anything else exposes the metrics to the network.
        port: The port to bind; 0 for any free port.
        registry: Where the metrics go (with whatever else it holds, all
            served on ``/metrics``); by default a registry of their own.
        notifiers: The monitor's notifiers (`~trio_tinkex_recovery.notify`),
            counted too.
        task_status: Reports the base URL, e.g. ``"http://127.0.0.1:9464"``.

    Raises:
        OSError: The address cannot be bound.
        ValueError: ``registry`` already has metrics of these names.
    """
    # Bound and registered before any task starts: errors are plain.
    with await bind_socket(host, port) as sock:
        metrics = MonitorMetrics._create(monitor, registry, notifiers)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics._follow)
            url: str = await nursery.start(
                partial(serve_asgi, _App(metrics), sock, logger=logger)
            )
            task_status.started(url)


@attrs.frozen(eq=False)
class _App:
    """The ASGI app: ``/metrics``, ``/healthz``, ``/readyz``; GET and HEAD."""

    metrics: MonitorMetrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, content_type, body = self._answer(scope["method"], scope["path"])
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body,
            }
        )

    def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path not in ("/metrics", "/healthz", "/readyz"):
            return 404, text, b"not found: try /metrics, /healthz or /readyz\n"
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        probe = (
            self.metrics.health() if path == "/healthz" else self.metrics.readiness()
        )
        return (200 if probe.ok else 503), text, f"{probe.reason}\n".encode()
