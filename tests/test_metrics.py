"""Prometheus metrics and probes of a monitor, on the in-process simulator."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trio_tinkex_recovery import Config, Policy, open_monitor, open_service_client
from trio_tinkex_recovery.metrics import MonitorMetrics, attach_metrics
from trio_tinkex_recovery.testing import FakeTinker, Fault

from .conftest import FakeRest, drain
from .reliability._support import KEY, is_poll

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_tinkex_recovery import Monitor

POLICY = Policy(enabled=True, poll_interval=10, jitter=0, backoff=1)
POLLS = "/api/v1/training_runs/"


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample of ``registry``, parsed back from the text format."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str):
    return samples[(f"tinkex_recovery_{name}", tuple(sorted(labels.items())))]


@asynccontextmanager
async def watched(
    fake: FakeTinker, policy: Policy = POLICY, **config: Any
) -> AsyncIterator[Monitor]:
    """A monitor polling ``fake`` in process."""
    async with (
        open_service_client(
            Config(api_key=KEY, base_url="https://tinker.test", **config),
            transport=fake.transport(),
        ) as service,
        # One GET per poll: the faults and counts here are per GET.
        open_monitor(policy=policy, service=service, polling="each") as monitor,
    ):
        yield monitor


async def test_counters_match_statistics_and_simulator(nursery, autojump_clock):
    """Counters, gauges and histograms agree with statistics() and the simulator."""
    fake = FakeTinker(base_latency=0.04)
    for run_id in ("run-1", "run-2", "run-3"):
        fake.add_run(run_id)
    fake.script(Fault.server_error(path=f"{POLLS}run-3"))
    async with watched(fake, max_retries=0) as monitor:
        metrics: MonitorMetrics = await nursery.start(attach_metrics, monitor)
        async with monitor.subscribe(100_000) as events:
            for run_id in ("run-1", "run-2", "run-3"):
                await monitor.monitor_run(run_id)
            await trio.sleep(15)
            fake.corrupt("run-1")
            await trio.sleep(20)  # t = 35: between two polls, none in flight
            samples = scrape(metrics.registry)
            stats = monitor.statistics()
            seen = drain(events, polls=True)
    polled = sum(e.name == "polled" for e in seen)
    [detected] = [e for e in seen if e.name == "detected"]
    [completed] = [e for e in seen if e.name == "completed"]

    assert value(samples, "polls_total", outcome="ok") == polled
    assert value(samples, "polls_total", outcome="error") == stats.poll_errors == 1
    assert polled + stats.poll_errors == stats.polls
    assert value(samples, "api_requests_total", kind="get") == stats.get_requests
    assert stats.get_requests == sum(map(is_poll, fake.requests))
    assert value(samples, "detected_total") == stats.detected == 1
    assert value(samples, "recovery_attempts_total") == stats.attempts == 1
    assert value(samples, "recoveries_total", outcome="completed") == 1
    assert fake.restore_count("run-1") == 1
    assert value(samples, "recoveries_total", outcome="exhausted") == 0
    assert value(samples, "recoveries_total", outcome="interrupted") == 0
    # run-2, run-3 and the restored run-1.
    assert value(samples, "watched_runs") == stats.monitored == 3
    assert value(samples, "recoveries_in_progress") == 0
    assert value(samples, "dropped_events_total") == 0
    # Every poll took the simulator's 40 ms.
    assert value(samples, "poll_duration_seconds_count") == stats.polls
    assert value(samples, "poll_duration_seconds_bucket", le="0.025") == 0
    assert value(samples, "poll_duration_seconds_bucket", le="0.05") == stats.polls
    assert value(samples, "recovery_duration_seconds_count") == 1
    assert value(samples, "recovery_duration_seconds_sum") == pytest.approx(
        completed.time - detected.time
    )


async def test_labels_never_carry_run_ids_or_the_key(nursery, autojump_clock):
    """Fifty runs give the same series as one; no run id or key appears."""

    async def series(count: int) -> tuple[set[Any], str]:
        fake = FakeTinker()
        async with watched(fake) as monitor:
            metrics = await nursery.start(attach_metrics, monitor)
            for index in range(count):
                fake.add_run(f"run-{index}")
                await monitor.monitor_run(f"run-{index}")
            fake.corrupt("run-0")
            await trio.sleep(15)
            text = generate_latest(metrics.registry).decode()
            assert monitor.statistics().completed == 1
        return set(scrape(metrics.registry)), text

    one, _ = await series(1)
    fifty, text = await series(50)
    assert {name for name, _ in fifty} == {name for name, _ in one}
    assert KEY not in text
    assert "run-" not in text


async def test_health_fails_after_three_intervals_without_an_answer(
    nursery, autojump_clock
):
    """/healthz logic: 503 once no poll was answered for 30 s, 200 again after."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with watched(fake) as monitor:
        metrics = await nursery.start(attach_metrics, monitor)
        assert metrics.health().ok
        assert metrics.health().reason == "no runs watched"
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        # The second poll (t = 10) takes 35 s: answered at t = 45.
        fake.script(Fault.latency(35, path=POLLS))
        await trio.sleep_until(30)
        assert metrics.health().ok
        await trio.sleep_until(30.5)
        probe = metrics.health()
        assert not probe.ok
        assert probe.reason.startswith("no poll answered for 30.5 s")
        await trio.sleep_until(46)
        assert metrics.health().ok


async def test_failed_polls_do_not_count_as_answers(nursery, autojump_clock):
    """Polls that all fail make the watcher unhealthy as hanging ones do."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with watched(fake, max_retries=0) as monitor:
        metrics = await nursery.start(attach_metrics, monitor)
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        fake.add_fault_rate(Fault.server_error(path=POLLS), 1.0)
        await trio.sleep_until(31)
        assert monitor.statistics().poll_errors == 3
        assert not metrics.health().ok


async def test_readiness_waits_for_every_watched_run(nursery, autojump_clock):
    """/readyz logic: not ready until each watched run was polled once."""
    fake = FakeTinker()
    fake.add_run("run-1")
    fake.add_run("run-2")
    fake.script(Fault.latency(5, path=f"{POLLS}run-2"))
    async with watched(fake) as monitor:
        metrics = await nursery.start(attach_metrics, monitor)
        assert metrics.readiness().ok
        await monitor.monitor_run("run-1")
        await monitor.monitor_run("run-2")
        await trio.sleep(1)
        probe = metrics.readiness()
        assert not probe.ok
        assert probe.reason == "1 of 2 watched runs not polled yet"
        await trio.sleep_until(6)
        assert metrics.readiness().ok
        # A run no longer watched no longer counts.
        monitor.stop_monitoring("run-2")
        assert metrics.readiness().reason == "all 1 watched runs polled"


async def test_slow_subscriber_never_slows_polling(nursery, autojump_clock):
    """1,500 polls at once overflow the subscriber; polls stay on time, counts exact."""
    rest = FakeRest()
    runs = [f"run-{index}" for index in range(1500)]
    for run_id in runs:
        rest.add(run_id, "ckpt-0001")
    async with open_monitor(policy=POLICY, rest=rest) as monitor:
        metrics = await nursery.start(attach_metrics, monitor)
        for run_id in runs:
            await monitor.monitor_run(run_id)
        await trio.sleep(25)
        samples = scrape(metrics.registry)
        stats = monitor.statistics()
    # Every run polled at 0, 10 and 20, to the instant.
    assert all(rest.poll_times(run_id) == [0, 10, 20] for run_id in runs)
    dropped = value(samples, "dropped_events_total")
    assert dropped > 0
    assert value(samples, "api_requests_total", kind="get") == stats.polls == 4500
    # Counters come from statistics(): exact, whatever the subscriber lost;
    # only the histogram, fed by events, misses the dropped ones.
    assert value(samples, "polls_total", outcome="ok") == stats.polled == 4500
    assert value(samples, "poll_duration_seconds_count") + dropped == 4500


async def test_one_monitor_per_registry(nursery, autojump_clock):
    """A registry holding one monitor's metrics refuses a second monitor's."""
    registry = CollectorRegistry()
    async with watched(FakeTinker()) as first, watched(FakeTinker()) as second:
        metrics = await nursery.start(attach_metrics, first, registry)
        assert metrics.registry is registry
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            await nursery.start(attach_metrics, second, registry)


async def test_metrics_leave_the_registry_when_the_task_ends(autojump_clock):
    """Ending attach_metrics frees the registry for another monitor."""
    fake = FakeTinker()
    registry = CollectorRegistry()
    async with watched(fake) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(attach_metrics, monitor, registry)
            assert scrape(registry)
            nursery.cancel_scope.cancel()
        assert scrape(registry) == {}
        async with trio.open_nursery() as nursery:
            metrics = await nursery.start(attach_metrics, monitor, registry)
            assert value(scrape(metrics.registry), "watched_runs") == 0
            nursery.cancel_scope.cancel()


def test_no_public_constructor():
    """MonitorMetrics comes from attach_metrics only."""
    with pytest.raises(TypeError, match="attach_metrics"):
        MonitorMetrics()
