"""Coalesced polling against the in-process simulator, under MockClock."""

from __future__ import annotations

import itertools
from collections import defaultdict

import trio

from trio_tinkex_recovery import Policy, open_monitor
from trio_tinkex_recovery.testing import FakeTinker, Fault

from .conftest import drain
from .reliability._support import is_poll, service_client

POLICY = Policy(enabled=True, poll_interval=5.0, jitter=0.1)
INTERVAL = POLICY.poll_interval
LIST_PATH = "/api/v1/training_runs"


def simulator(runs: int, **options) -> FakeTinker:
    fake = FakeTinker(**options)
    for index in range(runs):
        fake.add_run(f"run-{index:04d}")
    return fake


def requests_between(fake: FakeTinker, lo: float, hi: float) -> tuple[int, int]:
    """(GET polls, list pages) the simulator received in ``[lo, hi)``."""
    window = [r for r in fake.requests if lo <= r.time < hi]
    pages = sum(r.method == "GET" and r.path == LIST_PATH for r in window)
    return sum(map(is_poll, window)), pages


def polls_by_run(events) -> dict[str, list[float]]:
    times = defaultdict(list)
    for event in events:
        if event.name == "polled":
            times[event.run_id].append(event.time)
    return times


async def watch_all(monitor, fake: FakeTinker, *, spread: float = 0.0) -> None:
    """Watch every run of ``fake``, one after another over ``spread`` seconds."""
    runs = list(fake.run_ids)
    start = trio.current_time()
    for index, run_id in enumerate(runs):
        await trio.sleep_until(start + spread * index / len(runs))
        await monitor.monitor_run(run_id)


async def test_thousand_runs_cost_under_two_requests_per_hundred(autojump_clock):
    """1,000 runs added over an interval: ≤ 0.02 requests per run per interval,
    every run polled once per interval, never later than its own schedule."""
    fake = simulator(1000, base_latency=0.05)
    async with service_client(fake) as service:
        async with open_monitor(policy=POLICY, service=service) as monitor:
            async with monitor.subscribe(1_000_000) as events:
                await watch_all(monitor, fake, spread=INTERVAL)
                await trio.sleep_until(7 * INTERVAL)
                seen = drain(events, polls=True)
                stats = monitor.statistics()
    gets, pages = requests_between(fake, 2 * INTERVAL, 7 * INTERVAL)
    assert (gets + pages) / (1000 * 5) <= 0.02
    assert stats.list_requests + stats.get_requests == sum(
        requests_between(fake, 0, 7 * INTERVAL)
    )
    polls = polls_by_run(seen)
    assert len(polls) == 1000
    for times in polls.values():
        # Once per interval: the gap is the interval plus at most a page's
        # latency, and each interval after the first holds one poll.
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap <= INTERVAL * (1 + POLICY.jitter) + 0.2 for gap in gaps)
        late = [t for t in times if t >= 2 * INTERVAL]
        assert len(late) == 5


async def test_shuffled_order_loses_no_run(autojump_clock):
    """A new order on every page: runs no page showed are fetched by a GET in
    the same cycle."""
    fake = simulator(300, list_order="shuffled")
    async with service_client(fake) as service:
        async with open_monitor(policy=POLICY, service=service) as monitor:
            async with monitor.subscribe(1_000_000) as events:
                await watch_all(monitor, fake)
                await trio.sleep(INTERVAL)
                drain(events, polls=True)
                begin = trio.current_time()
                await trio.sleep(3 * INTERVAL)
                seen = drain(events, polls=True)
    polls = polls_by_run(seen)
    assert len(polls) == 300
    assert all(len(times) == 3 for times in polls.values())
    vias = defaultdict(set)
    for event in seen:
        vias[event.metadata["via"]].add(round(event.time - begin, 6))
    # Some runs came from pages, the ones they missed from GETs, each cycle.
    assert vias.keys() == {"list", "get"}
    gets, pages = requests_between(fake, begin, begin + 3 * INTERVAL)
    assert 0 < gets < 300 * 3
    assert pages <= 3 * 3


async def test_list_endpoint_404_falls_back_to_gets(autojump_clock):
    """The list answering 404: polled one GET per run from then on."""
    fake = simulator(20)
    async with service_client(fake) as service:
        async with open_monitor(policy=POLICY, service=service) as monitor:
            async with monitor.subscribe(100_000) as events:
                await watch_all(monitor, fake)
                await trio.sleep(INTERVAL - 0.5)  # Before the first sweep.
                fake.script(Fault.status_code(404, path=LIST_PATH))
                drain(events, polls=True)
                begin = trio.current_time()
                await trio.sleep(3 * INTERVAL)
                seen = drain(events, polls=True)
                stats = monitor.statistics()
    assert stats.poll_errors == 0
    assert {e.name for e in seen} == {"polled"}
    assert {e.metadata["via"] for e in seen} == {"get"}
    assert all(len(t) == 3 for t in polls_by_run(seen).values())
    gets, pages = requests_between(fake, begin, begin + 3 * INTERVAL)
    assert (gets, pages) == (60, 1)


async def test_monitor_all_picks_up_new_runs_and_leaves_broken_ones(
    autojump_clock,
):
    """monitor_all on the simulator: new runs are found by the next sweep; a
    run corrupted before discovery is not restored."""
    fake = simulator(5)
    fake.corrupt("run-0003")
    async with service_client(fake) as service:
        async with open_monitor(policy=POLICY, service=service) as monitor:
            await monitor.monitor_all(active_within=float("inf"))
            assert len(monitor.monitored_runs) == 5
            await trio.sleep(INTERVAL / 2)
            fake.add_run("run-late")
            await trio.sleep(INTERVAL)
            assert "run-late" in monitor.monitored_runs
            await trio.sleep(2 * INTERVAL)
            stats = monitor.statistics()
    assert stats.existing_corrupted == 1
    assert (stats.detected, stats.attempts) == (0, 0)
    assert fake.restore_count("run-0003") == 0
    assert stats.get_requests == 0


async def test_slow_pages_go_in_flight_together(autojump_clock):
    """Pages slow enough that 20 at a time would take most of an interval:
    more go in flight, so the sweep takes one round trip, not several."""
    latency = 2.0  # 40 pages, 20 at a time: 4 s of the 5 s interval.
    fake = simulator(4000, base_latency=latency, request_log_limit=None)
    async with service_client(fake) as service:
        async with open_monitor(policy=POLICY, service=service) as monitor:
            async with monitor.subscribe(1_000_000) as events:
                await watch_all(monitor, fake)
                await trio.sleep_until(6 * INTERVAL)
                seen = drain(events, polls=True)
    polls = polls_by_run(seen)
    assert len(polls) == 4000
    for k in (3, 4, 5):
        window = [t for times in polls.values() for t in times if k * INTERVAL <= t]
        window = [t for t in window if t < (k + 1) * INTERVAL]
        assert len(window) == 4000  # each run once per interval
        # Every page of the sweep answered within one round trip.
        assert max(window) - min(window) < latency / 2
