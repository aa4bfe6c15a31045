"""Telemetry: subscribers never stall the monitor; drops are counted."""

from __future__ import annotations

import itertools
import json
import logging

import pytest
import trio
import trio.testing

from trio_tinkex_recovery import EVENT_NAMES, Policy, open_monitor

from .conftest import drain

ENABLED = Policy(enabled=True, jitter=0, poll_interval=10)


async def test_a_reader_that_never_reads_does_not_delay_polls(
    service, rest, autojump_clock
):
    """A full subscriber buffer drops events; polls stay exactly on time."""
    for i in range(50):
        rest.add(f"run-{i}", "0001")
        rest.fail_polls[f"run-{i}"] = [RuntimeError("flaky")] * 100
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe(max_buffer=5) as events:
            for i in range(50):
                await monitor.monitor_run(f"run-{i}")
            await trio.sleep(95)
            stats = monitor.statistics()
            assert len(events.receive_nowait().run_id) > 0  # it did get the first ones
    for i in range(50):
        assert rest.poll_times(f"run-{i}") == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert stats.poll_errors == 500
    assert stats.dropped_events == 500 - 5


async def test_a_slow_reader_does_not_delay_polls(service, rest, autojump_clock):
    """A reader slower than the event rate loses events, never poll slots."""
    for i in range(20):
        rest.add(f"run-{i}", "0001")
        rest.fail_polls[f"run-{i}"] = [RuntimeError("flaky")] * 100
    received = []

    async def slow_reader(events):
        async for event in events:
            received.append(event)
            await trio.sleep(1)

    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe(max_buffer=10) as events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_reader, events)
                for i in range(20):
                    await monitor.monitor_run(f"run-{i}")
                await trio.sleep(95)
                nursery.cancel_scope.cancel()
            buffered = drain(events)
        stats = monitor.statistics()
    for i in range(20):
        assert rest.poll_times(f"run-{i}")[-1] == 90
    assert stats.poll_errors == 200
    assert 0 < len(received) < 200
    assert len(received) + len(buffered) + stats.dropped_events == 200


async def test_every_subscriber_gets_every_event(service, rest, autojump_clock):
    """Two subscribers each see the whole stream (no fan-out by cloning)."""
    rest.add("run-1", "0001", corrupted=True)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as a, monitor.subscribe() as b:
            await monitor.monitor_run("run-1")
            await trio.testing.wait_all_tasks_blocked()
            await monitor.executor.wait_idle()
            got_a = [a.receive_nowait().name for _ in range(6)]
            got_b = [b.receive_nowait().name for _ in range(6)]
    assert (
        got_a
        == got_b
        == [
            "polled",
            "detected",
            "started",
            "checkpoint_selected",
            "client_created",
            "completed",
        ]
    )


async def test_events_of_each_run_arrive_in_causal_order(service, rest, autojump_clock):
    """Per run, detection precedes the attempt events, which precede the outcome."""
    order = {name: i for i, name in enumerate(EVENT_NAMES)}
    service.failures = [RuntimeError("x")] * 3
    for i in range(10):
        rest.add(f"run-{i}", "0001", corrupted=True)
    async with open_monitor(
        policy=Policy(enabled=True, jitter=0.5, max_attempts=2, poll_interval=1),
        service=service,
        max_concurrent=3,
    ) as monitor:
        async with monitor.subscribe(max_buffer=10_000) as events:
            for i in range(10):
                await monitor.monitor_run(f"run-{i}")
            # Every first poll falls in [0, jitter·poll_interval].
            await trio.sleep(0.5)
            await monitor.executor.wait_idle()
            got = drain(events)
    for i in range(10):
        mine = [e for e in got if e.run_id == f"run-{i}"]
        assert mine[0].name == "detected"
        assert mine[-1].name in ("completed", "exhausted")
        times = [e.time for e in mine]
        assert times == sorted(times)
        attempts = [e.measurements.get("attempt", 0) for e in mine]
        assert attempts == sorted(attempts)
        for a, b in itertools.pairwise(mine):
            if a.measurements.get("attempt") == b.measurements.get("attempt"):
                assert order[a.name] <= order[b.name] or a.name == "failed"


async def test_every_event_is_logged(service, rest, autojump_clock, caplog):
    """Each event is a log record under trio_tinkex_recovery."""
    caplog.set_level(logging.INFO, logger="trio_tinkex_recovery")
    rest.add("run-1", "0001", corrupted=True)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.testing.wait_all_tasks_blocked()
        await monitor.executor.wait_idle()
    messages = [
        r.getMessage() for r in caplog.records if r.name == "trio_tinkex_recovery"
    ]
    assert [m.split()[1] for m in messages] == [
        "detected",
        "started",
        "checkpoint_selected",
        "client_created",
        "completed",
    ]
    assert "checkpoint=tinker://run-1/weights/0001" in messages[2]
    assert "new_run_id=session-1:train:1" in messages[-1]


async def test_event_to_json(service, rest, autojump_clock):
    """to_json gives a JSON-serialisable dict with the tinkex event name."""
    rest.add("run-1", "0001")
    rest.fail_polls["run-1"] = [RuntimeError("boom")]
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1", metadata={"obj": object()})
            event = await events.receive()
    data = json.loads(json.dumps(event.to_json()))
    assert data["event"] == ["tinkex", "recovery", "poll_error"]
    assert data["run_id"] == "run-1"
    assert data["metadata"]["error"] == "RuntimeError: boom"
    assert data["metadata"]["obj"] == "<object>"


async def test_subscribe_validates_buffer(service):
    """max_buffer must be a positive int."""
    async with open_monitor(service=service) as monitor:
        with pytest.raises(ValueError, match="max_buffer"):
            async with monitor.subscribe(max_buffer=0):
                pass  # pragma: no cover


async def test_statistics_snapshot(service, rest, autojump_clock):
    """statistics() is a frozen snapshot of the counters."""
    rest.add("run-1", "0001")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(25)
        stats = monitor.statistics()
        await trio.sleep(10)
        assert monitor.statistics().polls == 4
    assert (stats.monitored, stats.polls, stats.in_progress) == (1, 3, 0)
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.polls = 0  # type: ignore[misc]


async def test_log_lines_carry_no_control_characters(
    service, rest, autojump_clock, caplog
):
    """A server's escape sequences and newlines never reach a log line."""
    caplog.set_level(logging.DEBUG, logger="trio_tinkex_recovery")
    rest.add("run-1", "0001")
    rest.fail_polls["run-1"] = [
        RuntimeError("x\r\n[ 99.9s] run-1: recovered \x1b]0;t\x07\x1b[2J")
    ]
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("[ 99.9s] run-1: recovered" in m for m in messages)
    for message in messages:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in message), message
