"""Replicas sharing a PostgreSQL journal: leases on a mock clock, a real server.

The server's clock is moved with the mock clock (``time_shift``), so a
lease of 30 s expires after 30 s of mock time.  The mock clock never jumps
while a database call is in flight, so a slow query (two shared cores) is
not overtaken by a jump.
"""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from types import SimpleNamespace

import psycopg
import pytest
import trio
import trio.testing
from psycopg.conninfo import conninfo_to_dict

from trio_tinkex_recovery import Policy, open_monitor
from trio_tinkex_recovery._store import StoredRun
from trio_tinkex_recovery._store._postgres import PostgresStore, open_postgres_store

from .conftest import FakeRest, FakeService

LEASE = 30.0
POLL = 5.0
POLICY = Policy(enabled=True, jitter=0, poll_interval=POLL)
#: After a replica dies, each of its runs is polled again within this.
TAKEOVER_BOUND = LEASE + LEASE / 3 + POLL


@pytest.fixture
def mock_clock(monkeypatch):
    """A mock clock that the cluster jumps, but never while the database works."""
    clock = trio.testing.MockClock()
    clock.in_flight = 0
    run = PostgresStore._run

    async def counted(self, what, fn):
        clock.in_flight += 1
        try:
            return await run(self, what, fn)
        finally:
            clock.in_flight -= 1

    monkeypatch.setattr(PostgresStore, "_run", counted)
    return clock


async def autojump(clock):
    """Jump to the next deadline once every task waits, and no database call does."""
    while True:
        await trio.testing.wait_all_tasks_blocked(0.002)
        jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if not clock.in_flight and 0 < jump < math.inf:
            clock.jump(jump)


@pytest.fixture
def shift():
    """Seconds added to the server's clock so that it follows the mock clock."""
    start = time.monotonic()
    return lambda: trio.current_time() - (time.monotonic() - start)


@pytest.fixture
def world():
    """The runs on the (fake) Tinker every replica polls."""
    return FakeRest()


class Cluster:
    """Replicas in one process, each with its own store, monitor and fakes."""

    def __init__(self, dsn, shift, world, nursery, clock):
        self.dsn, self.shift, self.world, self.nursery = dsn, shift, world, nursery
        self.clock = clock

    async def store(self, **options):
        self.clock.in_flight += 1
        try:
            return await open_postgres_store(
                self.dsn, lease=LEASE, time_shift=self.shift, connect_timeout=0.5
            )
        finally:
            self.clock.in_flight -= 1

    async def add(self, *run_ids):
        """Runs added by someone who watches none of them."""
        store = await self.store()
        try:
            for run_id in run_ids:
                self.world.add(run_id, "0001")
                await store.put_run(StoredRun(run_id))
        finally:
            await store.aclose()

    async def start(self, name):
        """A replica; ``await replica.stop(clean=...)`` ends it."""
        return await self.nursery.start(self._replica, name)

    async def _replica(self, name, task_status):
        store = await self.store()
        rest = FakeRest()
        rest.runs, rest.checkpoints = self.world.runs, self.world.checkpoints
        done = trio.Event()
        cancel = trio.CancelScope()
        replica = SimpleNamespace(name=name, store=store, rest=rest, stopped_at=None)

        async def stop(*, clean=True):
            if not clean:
                # Dies without a word: nothing is given back.
                store.release = trio.lowlevel.checkpoint
            replica.stopped_at = trio.current_time()
            cancel.cancel()
            await done.wait()

        replica.stop = stop
        try:
            with cancel:
                async with open_monitor(
                    policy=POLICY, service=FakeService(rest), store=store
                ) as monitor:
                    replica.monitor = monitor
                    task_status.started(replica)
                    await trio.sleep_forever()
        finally:
            await store.aclose()
            done.set()


@asynccontextmanager
async def cluster(dsn, shift, world, clock):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(autojump, clock)
        yield Cluster(dsn, shift, world, nursery, clock)
        nursery.cancel_scope.cancel()


def first_poll(replica, run_id, after):
    return min(t for t in replica.rest.poll_times(run_id) if t >= after)


async def test_replicas_share_the_runs_fairly(postgres_dsn, shift, world, mock_clock):
    """Three replicas on nine runs: three each, every run polled by exactly one."""
    runs = [f"run-{i}" for i in range(9)]
    async with cluster(postgres_dsn, shift, world, mock_clock) as c:
        await c.add(*runs)
        replicas = [await c.start(name) for name in "abc"]
        await trio.sleep(3 * LEASE)
        stats = [r.monitor.statistics() for r in replicas]
        assert [(s.leases_held, s.replicas, s.monitored) for s in stats] == [
            (3, 3, 3)
        ] * 3
        watched = [r.monitor.monitored_runs for r in replicas]
        assert set().union(*watched) == set(runs)
        mark = trio.current_time()
        await trio.sleep(2 * POLL)
        for run_id in runs:
            pollers = [
                r.name
                for r in replicas
                if max(r.rest.poll_times(run_id), default=0) > mark
            ]
            assert len(pollers) == 1, (run_id, pollers)


#: A real-clock lease: short, so that real renewals come every second.
REAL_LEASE = 3.0


async def until(condition, *, guard: float = 120) -> None:
    """Return once ``condition()`` holds; ``guard`` only stops a hang."""
    with trio.fail_after(guard):
        while True:  # state of other tasks and a server: checked often
            if condition():
                return
            await trio.sleep(0.02)


async def test_a_joining_replica_gets_work_within_two_renewals(postgres_dsn, world):
    """One replica holds six runs; a second one joins and polls three of them
    by its second renewal, each given back (polling stopped) before taken.

    On the real clock against the real server: renewals are counted, not
    timed, so a busy machine changes when, never whether."""
    runs = [f"run-{i}" for i in range(6)]
    renewals: list[str] = []

    async with trio.open_nursery() as nursery:

        async def replica(name, *, task_status=trio.TASK_STATUS_IGNORED):
            store = await open_postgres_store(postgres_dsn, lease=REAL_LEASE)
            renew = store.renew

            async def counted():
                answer = await renew()
                renewals.append(name)
                return answer

            store.renew = counted
            rest = FakeRest()
            rest.runs, rest.checkpoints = world.runs, world.checkpoints
            try:
                async with open_monitor(
                    policy=Policy(enabled=True, jitter=0, poll_interval=0.1),
                    service=FakeService(rest),
                    store=store,
                ) as monitor:
                    task_status.started(SimpleNamespace(monitor=monitor, rest=rest))
                    await trio.sleep_forever()
            finally:
                await store.aclose()

        store = await open_postgres_store(postgres_dsn, lease=REAL_LEASE)
        try:
            for run_id in runs:
                world.add(run_id, "0001")
                await store.put_run(StoredRun(run_id))
        finally:
            await store.aclose()
        a = await nursery.start(replica, "a")
        await until(lambda: a.monitor.monitored_runs == set(runs))
        b = await nursery.start(replica, "b")  # its first round is done
        joined = trio.current_time()
        first_round = len(renewals)
        await until(lambda: len(b.monitor.monitored_runs) == 3)
        b_renewals = renewals[first_round:].count("b")
        await until(
            lambda: a.monitor.monitored_runs == set(runs) - b.monitor.monitored_runs
        )
        for run_id in b.monitor.monitored_runs:
            await until(lambda run_id=run_id: b.rest.poll_times(run_id))
            assert max(a.rest.poll_times(run_id)) <= first_poll(b, run_id, joined)
        nursery.cancel_scope.cancel()
    # a gives back at its next round, b claims at its next round after that.
    assert b_renewals <= 2, renewals


async def test_a_dead_replicas_runs_are_polled_again_within_the_bound(
    postgres_dsn, shift, world, mock_clock
):
    """Death without a word: its runs are polled again within L + L/3 + poll."""
    runs = [f"run-{i}" for i in range(4)]
    async with cluster(postgres_dsn, shift, world, mock_clock) as c:
        await c.add(*runs)
        a = await c.start("a")
        b = await c.start("b")
        await trio.sleep(2 * LEASE)
        orphans = a.monitor.monitored_runs
        assert len(orphans) == 2
        await a.stop(clean=False)
        await trio.sleep(TAKEOVER_BOUND + 1)
        for run_id in orphans:
            delay = first_poll(b, run_id, a.stopped_at) - a.stopped_at
            # Not before its lease can have expired, and within the bound.
            assert LEASE - LEASE / 3 <= delay <= TAKEOVER_BOUND
        stats = b.monitor.statistics()
        assert (stats.leases_held, stats.replicas) == (4, 1)
        assert b.monitor._leases.takeovers == 2


async def test_a_clean_shutdown_hands_the_runs_over_at_once(
    postgres_dsn, shift, world, mock_clock
):
    """Leases given back: the other replica polls them within a third of a lease."""
    runs = [f"run-{i}" for i in range(4)]
    async with cluster(postgres_dsn, shift, world, mock_clock) as c:
        await c.add(*runs)
        a = await c.start("a")
        b = await c.start("b")
        await trio.sleep(2 * LEASE)
        handed = a.monitor.monitored_runs
        await a.stop()
        await trio.sleep(LEASE / 3 + 1)
        for run_id in handed:
            assert first_poll(b, run_id, a.stopped_at) - a.stopped_at <= LEASE / 3
        assert b.monitor._leases.takeovers == 0


async def test_a_run_added_anywhere_is_watched_within_a_renewal(
    postgres_dsn, shift, world, mock_clock
):
    """Added by another process, or by monitor_run: some replica polls it soon."""
    async with cluster(postgres_dsn, shift, world, mock_clock) as c:
        a = await c.start("a")
        start = trio.current_time()
        await c.add("run-x")
        await trio.sleep(LEASE / 3 + 1)
        assert first_poll(a, "run-x", start) - start <= LEASE / 3
        world.add("run-y", "0001")
        start = trio.current_time()
        await a.monitor.monitor_run("run-y")
        await trio.sleep(1)
        assert first_poll(a, "run-y", start) - start < 1
        assert a.monitor.statistics().leases_held == 2


async def test_without_the_database_polling_stops_before_the_leases_expire(
    postgres_server, postgres_dsn, shift, world, mock_clock
):
    """Renewals fail: polls go on until the leases could expire, then stop; they
    resume once the database is back."""
    name = conninfo_to_dict(postgres_dsn)["dbname"]

    def database(allowed):
        with psycopg.connect(postgres_server.get_uri(), autocommit=True) as db:
            db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allowed}')
            if not allowed:
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s",
                    (name,),
                )

    async with cluster(postgres_dsn, shift, world, mock_clock) as c:
        await c.add("run-1", "run-2")
        a = await c.start("a")
        await trio.sleep(LEASE)
        assert a.monitor.monitored_runs == {"run-1", "run-2"}
        await trio.to_thread.run_sync(database, False)
        gone = trio.current_time()
        await trio.sleep(2 * LEASE)
        polls = [t for t in a.rest.poll_times("run-1") if t > gone]
        assert polls, "polling went on while the leases were valid"
        assert max(polls) < gone + LEASE
        assert a.monitor.monitored_runs == frozenset()
        assert a.monitor.statistics().leases_held == 0
        await trio.to_thread.run_sync(database, True)
        # The pool reconnects in real time, with backoff: wait for that
        # (the mock clock runs ahead meanwhile).
        for _ in range(1000):
            if a.monitor.monitored_runs == {"run-1", "run-2"}:
                break
            await trio.sleep(1)
        else:
            pytest.fail("the replica did not act again once the database was back")
        assert a.monitor.statistics().leases_held == 2
