"""Replicas that discover runs (``monitor_all``) act only on the runs they lease.

Real PostgreSQL and the real clock (no mock clock against a real server):
waits are on conditions, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import datetime as dt

import trio

from trio_tinkex_recovery import Policy, open_monitor
from trio_tinkex_recovery._store._postgres import open_postgres_store

from .conftest import FakeService, ListingFakeRest

POLICY = Policy(enabled=True, jitter=0, poll_interval=0.2)
RUNS = [f"run-{index}" for index in range(6)]


async def until(condition, seconds: float = 30) -> None:
    """Return once ``condition()`` holds, checked often."""
    with trio.fail_after(seconds):
        while True:
            if condition():
                return
            await trio.sleep(0.05)


async def test_two_discovering_replicas_split_the_listed_runs(postgres_dsn):
    """Two replicas list the same six runs: each polls only the ones it holds,
    every run is polled by one of them, and a corruption is restored once."""
    world = ListingFakeRest()
    for run_id in RUNS:
        world.add(run_id, "0001")
        world.touch(run_id, dt.datetime.now(dt.UTC))
    services = []
    monitors = []
    async with trio.open_nursery() as nursery:

        async def run_replica(done: trio.Event, task_status=trio.TASK_STATUS_IGNORED):
            rest = ListingFakeRest()
            rest.runs, rest.checkpoints = world.runs, world.checkpoints
            service = FakeService(rest)
            store = await open_postgres_store(postgres_dsn, lease=3.0)
            try:
                async with open_monitor(
                    policy=POLICY, service=service, store=store
                ) as monitor:
                    await monitor.monitor_all()
                    services.append(service)
                    monitors.append(monitor)
                    task_status.started()
                    await done.wait()
            finally:
                await store.aclose()

        done = trio.Event()
        await nursery.start(run_replica, done)
        await nursery.start(run_replica, done)
        a, b = monitors

        def split() -> bool:
            held = a.statistics().leases_held + b.statistics().leases_held
            return held == len(RUNS) and a.monitored_runs and b.monitored_runs

        await until(split)
        assert not a.monitored_runs & b.monitored_runs
        assert a.monitored_runs | b.monitored_runs == set(RUNS)
        world.corrupt("run-3")
        await until(lambda: sum(len(s.calls) for s in services) == 1)
        await until(lambda: a.statistics().completed + b.statistics().completed == 1)
        done.set()
    assert sum(len(s.calls) for s in services) == 1


async def test_a_run_that_cannot_be_taken_up_does_not_stop_the_replica(
    postgres_dsn, caplog
):
    """A stored run whose REST client cannot be made (the user's factory
    raises): that run is logged and left; the replica keeps the others."""
    from trio_tinkex_recovery._store import StoredRun

    world = ListingFakeRest()
    for run_id in ("good", "bad"):
        world.add(run_id, "0001")
    seed = await open_postgres_store(postgres_dsn, lease=3.0)
    for run_id in ("good", "bad"):
        await seed.put_run(StoredRun(run_id))
    await seed.aclose()

    def rest_for(service):
        if service.name == "bad":
            raise RuntimeError("no REST client for this one")
        return world

    service = FakeService(world)
    service.name = "bad"
    store = await open_postgres_store(postgres_dsn, lease=3.0)
    try:
        with trio.fail_after(30):
            async with open_monitor(
                policy=POLICY, service=service, store=store, rest_for_service=rest_for
            ) as monitor:
                await until(lambda: monitor.statistics().leases_held == 2)
                await trio.sleep(4 * POLICY.poll_interval)
                service.name = "good"
                await monitor.monitor_run("good")
                assert "good" in monitor.monitored_runs
    finally:
        await store.aclose()
    assert any("no REST client" in r.getMessage() for r in caplog.records)
