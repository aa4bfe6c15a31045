"""Load: 1,000 polled runs with a subscriber that never reads and one that
reads slowly.  Polls stay on schedule, and every event a subscriber loses is
counted in ``statistics().dropped_events``, exactly.

The default variant runs the simulator in process under ``MockClock``: a
subscriber that stalled the sender would stall polls, which would then miss
their exact times.  The slow variant runs the simulator in another process
over loopback, in real time, and measures when polls start.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from functools import partial
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from trio_tinkex_recovery import Policy, open_monitor

from ..conftest import FakeService, drain
from ._support import FAST, KEY, Recorder, service_client

if TYPE_CHECKING:
    from trio_tinkex_recovery import Monitor, TelemetryEvent

RUNS = 1000
SMALL_BUFFER = 16


@attrs.define
class Subscribers:
    """A subscriber that never reads and one that reads one event a second."""

    never: trio.MemoryReceiveChannel[TelemetryEvent] | None = None
    slow_received: int = 0
    slow: trio.MemoryReceiveChannel[TelemetryEvent] | None = None

    async def never_read(
        self, monitor: Monitor, *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with monitor.subscribe(SMALL_BUFFER) as events:
            self.never = events
            task_status.started()
            await trio.sleep_forever()

    async def read_slowly(
        self, monitor: Monitor, *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with monitor.subscribe(SMALL_BUFFER) as events:
            self.slow = events
            task_status.started()
            async for _ in events:
                self.slow_received += 1
                await trio.sleep(1.0)

    def delivered(self) -> tuple[int, int]:
        """Events each subscriber got (read or still buffered), drained now."""
        assert self.never is not None
        assert self.slow is not None
        return (
            len(drain(self.never, polls=True)),
            self.slow_received + len(drain(self.slow, polls=True)),
        )


async def check_drops(
    monitor: Monitor, everything: Recorder, subs: Subscribers
) -> None:
    """Every event lost by a small buffer is counted, exactly."""
    # A reader may hold an event it was handed but has not counted yet.
    await trio.testing.wait_all_tasks_blocked()
    total = len(everything.events)
    never, slow = subs.delivered()
    assert never == SMALL_BUFFER
    assert slow < total
    assert monitor.statistics().dropped_events == (total - never) + (total - slow)


async def test_slow_subscribers_never_delay_polls_of_a_thousand_runs(autojump_clock):
    """1,000 runs, a fifth of polls failing, two lagging subscribers: every
    poll happens at its exact time and every lost event is counted."""
    rng = random.Random(11)
    service = FakeService()
    rest = service.rest
    ids = [f"load-{i:04d}" for i in range(RUNS)]
    interval, slots = 30.0, 4
    for run_id in ids:
        rest.add(run_id, "ckpt-0001", corrupted=run_id in ids[:5])
        failures = [i for i in range(slots) if rng.random() < 0.2]
        rest.fail_polls[run_id] = [RuntimeError("boom")] * len(failures)
    # Failing polls come first for each run; which slot fails does not matter.
    policy = Policy(
        enabled=True, jitter=0, poll_interval=interval, follow_recovered=False
    )
    subs = Subscribers()
    everything = Recorder(polls=True)
    async with (
        open_monitor(policy=policy, service=service) as monitor,
        trio.open_nursery() as side,
    ):
        await side.start(everything.run, monitor)
        await side.start(subs.never_read, monitor)
        await side.start(subs.read_slowly, monitor)
        start = trio.current_time()
        for run_id in ids:
            await monitor.monitor_run(run_id)
        await trio.sleep_until(start + (slots - 1) * interval + 1)
        await monitor.executor.wait_idle()
        stats = monitor.statistics()
        await check_drops(monitor, everything, subs)
        side.cancel_scope.cancel()
    schedule = [start + k * interval for k in range(slots)]
    corrupted = set(ids[:5])
    for run_id in ids:
        polls = rest.poll_times(run_id)
        if run_id in corrupted:
            # Detected at its first successful poll, then handed over.
            assert polls == schedule[: len(polls)]
        else:
            assert polls == schedule, run_id
    assert stats.poll_errors == everything.count("poll_error")
    assert stats.poll_errors > RUNS / 2
    # Judged by the service: one restore per corrupted run, from its
    # checkpoint, and none for any other run.
    assert sorted(call[1] for call in service.calls) == sorted(
        f"tinker://{run_id}/weights/ckpt-0001" for run_id in corrupted
    )
    assert stats.completed == len(corrupted)
    assert stats.dropped_events > 2 * (stats.poll_errors - SMALL_BUFFER - 10)


# -- real time, simulator in another process -----------------------------------

SERVER = """
import sys, trio
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

async def main():
    fake = FakeTinker(api_key=sys.argv[1], seed=5)
    for i in range(int(sys.argv[2])):
        fake.add_run(f"load-{i:04d}")
    fake.add_fault_rate(Fault.server_error(path="/api/v1/training_runs/"), 0.05)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_tinker, fake)
        print(url, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.mark.slow
async def test_polls_of_a_thousand_runs_stay_on_schedule_over_loopback():
    """1,000 runs over real HTTP (simulator in another process), with two
    lagging subscribers: ≥ 99 % of polls start within 10 % of the interval
    after their slot, none is skipped, and every lost event is counted."""
    interval, jitter, slots = 20.0, 0.25, 3
    async with trio.open_nursery() as nursery:
        command = [sys.executable, "-c", SERVER, KEY, str(RUNS)]
        server = await nursery.start(
            partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        )
        try:
            assert server.stdout is not None
            with trio.fail_after(30):
                url = (await server.stdout.receive_some(200)).decode().strip()
            policy = Policy(enabled=True, jitter=jitter, poll_interval=interval)
            subs = Subscribers()
            everything = Recorder(polls=True)
            async with service_client(
                base_url=url, settings=FAST, max_retries=0, timeout=10
            ) as service:
                async with (
                    open_monitor(policy=policy, service=service) as monitor,
                    trio.open_nursery() as side,
                ):
                    await side.start(everything.run, monitor)
                    await side.start(subs.never_read, monitor)
                    await side.start(subs.read_slowly, monitor)
                    watched: dict[str, float] = {}
                    for i in range(RUNS):
                        run_id = f"load-{i:04d}"
                        watched[run_id] = trio.current_time()
                        await monitor.monitor_run(run_id)
                    end = max(watched.values()) + (slots - 1) * interval + interval / 2
                    await trio.sleep_until(end)
                    await check_drops(monitor, everything, subs)
                    side.cancel_scope.cancel()
        finally:
            nursery.cancel_scope.cancel()
    late = []
    for run_id, t0 in watched.items():
        starts = [
            e.time - e.measurements["duration"]
            for e in everything.events
            if e.run_id == run_id and e.name in ("polled", "poll_error")
        ]
        assert len(starts) == slots, (run_id, starts)
        for k, started in enumerate(starts):
            lateness = started - (t0 + k * interval)
            assert lateness >= -0.01
            late.append(lateness > (jitter + 0.1) * interval)
    assert sum(late) <= math.floor(0.01 * len(late)), sum(late)
