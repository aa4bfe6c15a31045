"""Stalls: a watched run whose ``last_request_time`` stands still is reported.

On the fakes with the mock clock: the run "trains" when the test moves its
``last_request_time``.
"""

from __future__ import annotations

import datetime as dt

import pytest
import trio
import trio.lowlevel

from trio_tinkex_recovery import Policy, open_monitor

from .conftest import FakeService, ListingFakeRest, drain

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def policy(**overrides) -> Policy:
    return Policy(
        enabled=True, jitter=0, poll_interval=10, stall_timeout=60, **overrides
    )


def fleet(*run_ids: str) -> ListingFakeRest:
    rest = ListingFakeRest()
    for run_id in run_ids:
        rest.add(run_id, "0001")
        rest.touch(run_id, T0)
    return rest


async def trains(rest, run_id, until: float) -> None:
    """Move the run's last_request_time every 5 s until ``until`` (Trio time)."""
    while trio.current_time() < until:
        await trio.sleep(5)
        rest.touch(run_id, T0 + dt.timedelta(seconds=trio.current_time()))


@pytest.mark.parametrize("polling", ["each", "list"])
async def test_a_run_that_stops_moving_is_stalled_once_then_resumed(
    autojump_clock, polling
):
    """Training until 100 s, idle until 300 s, training again: one ``stalled``
    (at the first poll 60 s after it last moved), one ``resumed``."""
    rest = fleet("run-1", "run-2")
    async with open_monitor(policy=policy(), rest=rest, polling=polling) as monitor:
        async with monitor.subscribe() as events, trio.open_nursery() as nursery:
            nursery.start_soon(trains, rest, "run-2", 1000)
            await monitor.monitor_run("run-1")
            await monitor.monitor_run("run-2")
            await trains(rest, "run-1", 100)
            await trio.sleep(200)
            assert monitor.statistics().stalled == 1
            await trains(rest, "run-1", 400)
            nursery.cancel_scope.cancel()
            seen = [(e.name, e.run_id, e.time) for e in drain(events)]
            stats = monitor.statistics()
    assert [(n, r) for n, r, _ in seen] == [
        ("stalled", "run-1"),
        ("resumed", "run-1"),
    ]
    stalled_at = seen[0][2]
    assert 160 <= stalled_at <= 170  # moved last at 100 (seen at the 100 s poll)
    assert (stats.stalled, stats.stalls) == (0, 1)


async def test_stalls_are_off_by_default(autojump_clock):
    """Without stall_timeout nothing is reported, however still a run stands."""
    rest = fleet("run-1")
    async with open_monitor(
        policy=Policy(enabled=True, jitter=0, poll_interval=10), rest=rest
    ) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            await trio.sleep(1000)
            assert [e.name for e in drain(events)] == []


async def test_a_stall_is_never_restored(autojump_clock):
    """A stalled run is reported, not handed over: nothing is restored."""
    rest = fleet("run-1")
    service = FakeService(rest)
    async with open_monitor(policy=policy(), service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(500)
        stats = monitor.statistics()
    assert (stats.stalls, stats.detected, stats.attempts) == (1, 0, 0)
    assert service.calls == []


async def test_a_stalled_run_stopped_is_no_longer_counted(autojump_clock):
    """stop_monitoring of a stalled run: the stalled gauge goes back to 0."""
    rest = fleet("run-1")
    async with open_monitor(policy=policy(), rest=rest) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(100)
        assert monitor.statistics().stalled == 1
        monitor.stop_monitoring("run-1")
        await trio.lowlevel.checkpoint()
        assert monitor.statistics().stalled == 0


@pytest.mark.parametrize("value", [0, -1, float("nan"), "60", True])
def test_a_bad_stall_timeout_is_refused(value):
    """stall_timeout must be a number of seconds > 0 (or None)."""
    with pytest.raises((TypeError, ValueError), match="stall_timeout"):
        Policy(stall_timeout=value)
