"""Cancellation: stopping a run, or leaving ``open_monitor``, at random points.

One deterministic scenario (``MockClock``, jitter 0) passes through every
interesting place: polls in flight (each poll answers after 2 s), a restore
failing once and waiting out its backoff, a restore polling
``retrieve_future`` for 20 s, an async ``on_recovery`` callback taking 10 s,
a recovered run being followed, a second corruption later on.  We stop at
random times, chosen at random within each of those phases and across the
whole scenario, and check:

- after ``stop_monitoring(run)`` returns: no polling event (``detected``,
  ``poll_error``) and no poll for that run, and its task is gone (a
  recovery already handed over goes on, as documented);
- after ``open_monitor`` is left: no event at all, no request, no task of
  the monitor or executor left, no recovery left pending, no exception;
- nothing is ever restored twice, even by a monitor started again after one
  left mid-restore.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

from trio_tinkex_recovery import Policy, open_monitor
from trio_tinkex_recovery.testing import FakeTinker, Fault

from ..conftest import drain
from ._support import KEY, Intercept, live_tasks, service_client

if TYPE_CHECKING:
    from trio_tinkex_recovery import Monitor, TelemetryEvent

HEALTHY = ("healthy-1", "healthy-2")
BAD, LATE_BAD = "bad-1", "bad-2"
RUNS = (*HEALTHY, BAD, LATE_BAD)
POLLING_EVENTS = frozenset({"detected", "poll_error"})
#: When the scenario has run its course (the late corruption recovered).
END = 140.0

#: Phases of the scenario: (start, end) seconds after it began, checked at
#: the stop.
PHASES: dict[str, tuple[float, float]] = {
    "poll": (0.0, 2.0),  # the first polls of every run are in flight
    "backoff": (2.0, 7.0),  # bad-1's first attempt failed; retry at 7 s
    "retrieve_future": (7.0, 27.0),  # bad-1's restore result comes at 27 s
    "callback": (27.0, 37.0),  # on_recovery of bad-1 sleeps 10 s
    "late_poll": (60.0, 62.0),  # the poll that finds bad-2 corrupted
}
SERVER_FAILURES = 1


@attrs.define
class World:
    """The scenario's simulator, monitor and what it observed."""

    fake: FakeTinker
    monitor: Monitor
    events: trio.MemoryReceiveChannel[TelemetryEvent]
    in_callback: int = 0
    callbacks_done: int = 0

    def phase(self) -> str | None:
        """Which phase the scenario is in now, seen from the outside."""
        state = self.monitor.executor.recovery_state(BAD)
        if state is not None and state.phase == "waiting":
            return "backoff"
        if state is not None and state.phase == "attempting" and state.attempt == 2:
            last = self.fake.requests[-1]
            return "retrieve_future" if "retrieve_future" in last.path else None
        if self.in_callback:
            return "callback"
        return None


def corrupt_later(fake: FakeTinker, t0: float) -> Any:
    async def run() -> None:
        await trio.sleep_until(t0 + 40.0)
        fake.corrupt(LATE_BAD)

    return run


def build_fake() -> FakeTinker:
    fake = FakeTinker(api_key=KEY, future_delay=20.0, long_poll=5.0)
    for run_id in RUNS:
        fake.add_run(run_id)
    fake.corrupt(BAD)
    # Every poll answers after 2 s: polls are in flight for a while.
    fake.add_fault_rate(Fault.latency(2.0, method="GET"), 1.0)
    return fake


def server_failure_first() -> Any:
    """Intercept: the first load fails server-side (restoring nothing)."""
    failed = 0

    async def handler(method: str, route: str, body: Any) -> Any:
        nonlocal failed
        await trio.lowlevel.checkpoint()
        if route == "/api/v1/load_weights" and failed < SERVER_FAILURES:
            failed += 1
            return 200, {"request_id": "injected"}
        if (
            route == "/api/v1/retrieve_future"
            and (body or {}).get("request_id") == "injected"
        ):
            return 200, {"error": "worker lost", "category": "server"}
        return None

    return handler


class EventLog(logging.Handler):
    """Every telemetry event as it is logged (synchronously, in order)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "trio_tinkex_recovery" and record.msg.startswith(
            "recovery %s"
        ):
            assert isinstance(record.args, tuple)
            self.events.append((str(record.args[0]), str(record.args[1])))


@pytest.fixture
def event_log():
    handler = EventLog()
    logger = logging.getLogger("trio_tinkex_recovery")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def watch_tasks() -> int:
    return len(live_tasks("trio_tinkex_recovery._engine._monitor.Monitor._watch"))


async def scenario(stop_at: float, mode: str, event_log: EventLog) -> dict[str, Any]:
    """Run the scenario until ``stop_at`` (from its start), stop in ``mode``."""
    t0 = trio.current_time()
    fake = build_fake()
    report: dict[str, Any] = {"fake": fake}
    world: World | None = None

    async def on_recovery(old: Any, new: Any, checkpoint: Any) -> None:
        assert world is not None
        world.in_callback += 1
        try:
            await trio.sleep(10)
        finally:
            world.in_callback -= 1
        world.callbacks_done += 1

    policy = Policy(
        enabled=True, jitter=0, backoff=5.0, on_recovery=on_recovery, max_attempts=3
    )
    transport = Intercept(fake.app, server_failure_first()).transport()
    async with service_client(transport=transport) as service:
        async with open_monitor(policy=policy, service=service) as monitor:
            async with monitor.subscribe(100_000) as events:
                world = World(fake=fake, monitor=monitor, events=events)
                async with trio.open_nursery() as side:
                    side.start_soon(corrupt_later(fake, t0))
                    for run_id in RUNS:
                        await monitor.monitor_run(run_id)
                    await trio.sleep_until(t0 + stop_at)
                    report["phase"] = world.phase()
                    if mode == "stop":
                        stopped = set(monitor.monitored_runs)
                        for run_id in stopped:
                            monitor.stop_monitoring(run_id)
                        report["stopped"] = stopped
                        report["before"] = drain(events)
                        requests_at_stop = len(fake.requests)
                        await trio.testing.wait_all_tasks_blocked()
                        report["watch_tasks"] = watch_tasks()
                        report["monitored"] = monitor.monitored_runs
                        await trio.sleep_until(t0 + END)
                        report["after"] = drain(events)
                        report["requests_after"] = fake.requests[requests_at_stop:]
                        report["monitored_at_end"] = monitor.monitored_runs
                        report["watch_tasks_at_end"] = watch_tasks()
                    side.cancel_scope.cancel()
        # Left the monitor (cancelling everything in it).
        report["logged_at_exit"] = len(event_log.events)
        report["requests_at_exit"] = len(fake.requests)
        report["states"] = monitor.executor.recoveries
        report["leftover_tasks"] = live_tasks(
            "trio_tinkex_recovery._engine._monitor"
        ) + live_tasks("trio_tinkex_recovery._engine._executor")
        await trio.sleep(END)
        report["logged_later"] = len(event_log.events)
        report["requests_later"] = len(fake.requests)
    report["restores"] = fake.restores
    return report


def stop_times(
    seed: int, per_phase: int, anywhere: int
) -> list[tuple[float, str | None]]:
    """Random stop times: some inside each phase, some anywhere at all."""
    rng = random.Random(seed)
    times: list[tuple[float, str | None]] = []
    for name, (start, end) in PHASES.items():
        times += [(rng.uniform(start, end), name) for _ in range(per_phase)]
    times += [(rng.uniform(0, END), None) for _ in range(anywhere)]
    return times


def check_common(report: dict[str, Any]) -> None:
    assert all(count == 1 for count in report["restores"].values()), report["restores"]
    assert report["leftover_tasks"] == []
    assert not any(state.pending for state in report["states"].values())
    # Nothing at all happens once open_monitor has been left.
    assert report["logged_later"] == report["logged_at_exit"]
    assert report["requests_later"] == report["requests_at_exit"]


def phase_matches(expected: str | None, seen: str | None) -> bool:
    if expected in (None, "poll", "late_poll"):
        return True
    return seen == expected


async def check_stop(seed: int, count: int, event_log: EventLog) -> None:
    for stop_at, expected in stop_times(seed, count, 2 * count):
        report = await scenario(stop_at, "stop", event_log)
        assert phase_matches(expected, report["phase"]), (stop_at, report["phase"])
        stopped = report["stopped"]
        # No polling event, no poll, no task for a stopped run.
        late = [e for e in report["after"] if e.run_id in stopped]
        assert not [e for e in late if e.name in POLLING_EVENTS], (stop_at, late)
        polls = [
            r
            for r in report["requests_after"]
            if r.method == "GET" and r.path.rsplit("/", 1)[-1] in stopped
        ]
        assert polls == [], stop_at
        assert report["monitored"] == frozenset()
        assert report["watch_tasks"] == 0
        # Only a run followed after a recovery that went on is watched now.
        assert report["watch_tasks_at_end"] == len(report["monitored_at_end"])
        assert not report["monitored_at_end"] & stopped
        check_common(report)


async def check_leave(seed: int, count: int, event_log: EventLog) -> None:
    for stop_at, expected in stop_times(seed, count, 2 * count):
        report = await scenario(stop_at, "leave", event_log)
        assert phase_matches(expected, report["phase"]), (stop_at, report["phase"])
        check_common(report)


#: (seed, random points) run by default; the many-point ones with ``-m slow``.
RANDOM_POINTS = [
    pytest.param(1, 3, id="1"),
    pytest.param(2, 3, id="2"),
    *(
        pytest.param(seed, 10, id=f"{seed}-many", marks=pytest.mark.slow)
        for seed in range(3, 8)
    ),
]


@pytest.mark.parametrize(("seed", "count"), RANDOM_POINTS)
async def test_stop_monitoring_at_random_points(seed, count, event_log, autojump_clock):
    """stop_monitoring anywhere: no polling event, poll or task afterwards."""
    await check_stop(seed, count, event_log)


@pytest.mark.parametrize(("seed", "count"), RANDOM_POINTS)
async def test_leaving_open_monitor_at_random_points(
    seed, count, event_log, autojump_clock
):
    """Leaving open_monitor anywhere: nothing runs, nothing pends, no error."""
    await check_leave(seed, count, event_log)


async def test_a_new_monitor_resumes_a_restore_cut_short_without_repeating_it(
    autojump_clock,
):
    """Leave during retrieve_future; a new monitor on the same service client
    finishes the very same load: one restore."""
    fake = FakeTinker(api_key=KEY, future_delay=20.0, long_poll=5.0)
    fake.add_run(BAD, corrupted=True)
    policy = Policy(enabled=True, jitter=0)
    async with service_client(fake) as service:
        async with open_monitor(policy=policy, service=service) as monitor:
            await monitor.monitor_run(BAD)
            await trio.sleep(10)
            state = monitor.executor.recovery_state(BAD)
            assert state is not None
            assert state.phase == "attempting"
            assert fake.requests[-1].path == "/api/v1/retrieve_future"
        assert fake.restores == {BAD: 1}  # the simulator acted at once
        async with open_monitor(policy=policy, service=service) as monitor:
            async with monitor.subscribe() as events:
                await monitor.monitor_run(BAD)
                with trio.fail_after(100):
                    async for event in events:
                        if event.name == "completed":
                            break
            await monitor.executor.wait_idle()
    loads = [r for r in fake.requests if r.path == "/api/v1/load_weights"]
    assert len(loads) == 2
    assert loads[0].idempotency_key == loads[1].idempotency_key
    assert fake.restores == {BAD: 1}


async def test_stop_monitoring_inside_a_callback(autojump_clock):
    """stop_monitoring called from on_recovery stops that run at once."""
    fake = FakeTinker(api_key=KEY)
    for run_id in (BAD, *HEALTHY):
        fake.add_run(run_id)
    fake.corrupt(BAD)
    monitor: Monitor | None = None
    seen: list[frozenset[str]] = []

    def on_recovery(old: Any, new: Any, checkpoint: Any) -> None:
        assert monitor is not None
        monitor.stop_monitoring(HEALTHY[0])
        seen.append(monitor.monitored_runs)

    policy = Policy(enabled=True, jitter=0, on_recovery=on_recovery)
    async with service_client(fake) as service:
        # One GET per poll: the polls of the stopped run are counted by path.
        async with open_monitor(
            policy=policy, service=service, polling="each"
        ) as monitor:
            async with monitor.subscribe() as events:
                for run_id in (BAD, *HEALTHY):
                    await monitor.monitor_run(run_id)
                with trio.fail_after(100):
                    async for event in events:
                        if event.name == "completed":
                            break
                await monitor.executor.wait_idle()
                fake.corrupt(HEALTHY[0])  # would be detected if still watched
                fake.corrupt(HEALTHY[1])
                await trio.sleep(100)
                names = {(e.name, e.run_id) for e in drain(events)}
    # Seen from the first callback: healthy-1 stopped, bad-1 not yet followed.
    assert seen[0] == frozenset({HEALTHY[1]})
    assert ("detected", HEALTHY[0]) not in names
    assert ("detected", HEALTHY[1]) in names
    polls = [r.time for r in fake.requests if r.path.endswith(HEALTHY[0])]
    assert polls == [0.0]
