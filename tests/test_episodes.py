"""One restore per corruption episode, through every way a run reaches the monitor.

Discovery after a restart, ``monitor_run`` racing a detection, an outcome
write cut short, a journal that fails, a monitor closed with recoveries
queued, a clock that lies, and a watcher that lives for months.  Restores
are counted by the fake service's calls, never by the library's own
statistics alone.
"""

from __future__ import annotations

import logging
import time
import tracemalloc

import trio

from trio_tinkex_recovery import (
    NotFoundError,
    Policy,
    RecoveryState,
    StoreError,
    open_executor,
    open_monitor,
)
from trio_tinkex_recovery._store import MemoryStore, StoredRecovery, StoredRun

from .conftest import FakeService, drain
from .test_polling import fleet

ENABLED = Policy(enabled=True, jitter=0)
INTERVAL = ENABLED.poll_interval
SUCCESSOR = "session-1:train:1"


async def restore_once(service: FakeService, store: MemoryStore) -> None:
    """A first start: run-000 is corrupted and restored to its successor."""
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await monitor.monitor_run("run-000", metadata={"team": "a"})
        service.rest.corrupt("run-000")
        await trio.sleep(INTERVAL + 1)
        await monitor.executor.wait_idle()
    assert len(service.calls) == 1


async def test_discovery_after_a_restart_does_not_restore_a_restored_run(
    autojump_clock,
):
    """recover_existing=True: a run restored before the restart stays restored once."""
    service = FakeService(fleet(active=1))
    store = MemoryStore()
    await restore_once(service, store)
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await monitor.monitor_all(recover_existing=True)
        await trio.sleep(2 * INTERVAL)
        assert "run-000" not in monitor.monitored_runs
        assert SUCCESSOR in monitor.monitored_runs
    assert len(service.calls) == 1


async def test_discovery_after_a_restart_keeps_the_journal_row(autojump_clock, caplog):
    """By default too: not counted as found broken, its metadata and successor kept."""
    service = FakeService(fleet(active=1))
    store = MemoryStore()
    await restore_once(service, store)
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await monitor.monitor_all()
        await trio.sleep(2 * INTERVAL)
        assert monitor.statistics().existing_corrupted == 0
    row = (await store.load()).runs["run-000"]
    assert (row.recovered, row.successor, row.metadata) == (
        True,
        SUCCESSOR,
        {"team": "a"},
    )
    assert not any("already corrupted" in r.getMessage() for r in caplog.records)


async def test_a_resumed_recovery_is_not_detected_again_by_discovery(autojump_clock):
    """A recovery pending at the restart resumes; the first sweep leaves it be."""
    service = FakeService(fleet(active=1))
    service.rest.corrupt("run-000")
    service.delay = 100.0  # the restore outlives the first start
    store = MemoryStore()
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await monitor.monitor_run("run-000")
        await trio.sleep(1)
    service.delay = 0.0
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_all(recover_existing=True)
            await trio.sleep(2 * INTERVAL)
            seen = [e.name for e in drain(events) if e.run_id == "run-000"]
    assert "detected" not in seen
    assert seen.count("started") == 1


class SlowRunWrites(MemoryStore):
    """A journal whose run writes take ``delay`` seconds once ``slow`` is set."""

    slow = False
    delay = 10.0

    async def put_run(self, run: StoredRun) -> None:
        if self.slow:
            await trio.sleep(self.delay)
        await super().put_run(run)


async def test_monitor_run_racing_a_detection_restores_once(autojump_clock):
    """Watched again while its journal write is under way, the run is handed over
    meanwhile: the watch is not started afresh, and the run is restored once."""
    service = FakeService(fleet(active=1))
    service.rest.poll_delay = 10.0
    service.delay = 10.0
    store = SlowRunWrites()
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await monitor.monitor_run("run-000")
        await trio.sleep(20)
        service.rest.corrupt("run-000")  # the poll at 30 sees it, handed at 40
        await trio.sleep(15)
        store.slow = True  # this write ends at 45: handed over, not restored yet
        await monitor.monitor_run("run-000", metadata={"team": "b"})
        store.slow = False
        await trio.sleep(3 * INTERVAL)
    assert [path for _, path, _ in service.calls] == ["tinker://run-000/weights/0001"]


class SlowOutcomes(MemoryStore):
    """A journal whose outcome writes take five seconds."""

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        if not recovery.state.pending:
            await trio.sleep(5)
        await super().put_recovery(recovery)


async def test_an_outcome_write_cut_short_still_ends_the_recovery(autojump_clock):
    """The block exits while ``done`` is being written: it is written all the same,
    ``completed`` is emitted, and the next start restores nothing."""
    service = FakeService(fleet(active=1))
    service.rest.corrupt("run-000")
    store = SlowOutcomes()
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await monitor.monitor_run("run-000")
        await trio.sleep(1)  # restored at 0, its outcome written until 5
    stats = monitor.statistics()
    assert (stats.completed, stats.interrupted, stats.in_progress) == (1, 0, 0)
    assert (await store.load()).recoveries["run-000"].state.phase == "done"
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await trio.sleep(2 * INTERVAL)
    assert len(service.calls) == 1


class FailingRunWrites(MemoryStore):
    """A journal that cannot write runs (a full disk, a database blip)."""

    async def put_run(self, run: StoredRun) -> None:
        await trio.lowlevel.checkpoint()
        raise StoreError("cannot write state file /x: database or disk is full")


async def test_a_failed_write_for_a_discovered_run_is_logged(autojump_clock, caplog):
    """The monitor goes on watching every run; the error is logged."""
    service = FakeService(fleet(active=3))
    caplog.set_level(logging.ERROR, logger="trio_tinkex_recovery")
    async with open_monitor(
        policy=ENABLED, service=service, store=FailingRunWrites()
    ) as monitor:
        await monitor.monitor_all()
        await trio.sleep(INTERVAL + 1)
        assert monitor.monitored_runs == {"run-000", "run-001", "run-002"}
        service.rest.corrupt("run-001")
        await trio.sleep(INTERVAL)
    assert len(service.calls) == 1
    assert any("disk is full" in r.getMessage() for r in caplog.records)


async def test_closing_with_recoveries_queued_interrupts_them_all(autojump_clock):
    """Three recoveries, one slot: leaving the block interrupts all three."""
    service = FakeService(fleet(active=3))
    service.delay = 100.0
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        for run_id in ("run-000", "run-001", "run-002"):
            service.rest.corrupt(run_id)
            await monitor.monitor_run(run_id)
        await trio.sleep(1)
        assert monitor.statistics().in_progress == 3
    stats = monitor.statistics()
    assert (stats.interrupted, stats.in_progress) == (3, 0)
    with trio.move_on_after(1):
        await monitor.executor.wait_idle()
    assert {s.phase for s in monitor.executor.recoveries.values()} == {"interrupted"}


async def test_a_retry_resumed_from_a_clock_ahead_waits_at_most_max_backoff(
    autojump_clock,
):
    """The journal says retry in a day (its writer's clock was ahead): the
    resumed retry waits at most ``max_backoff``."""
    service = FakeService(fleet(active=1))
    service.rest.corrupt("run-000")
    store = MemoryStore()
    await store.put_run(StoredRun("run-000", {}))
    await store.put_recovery(
        StoredRecovery(
            state=RecoveryState(run_id="run-000", phase="waiting", attempt=1),
            retry_at_wall=time.time() + 86400,
        )
    )
    async with open_monitor(policy=ENABLED, service=service, store=store) as monitor:
        await trio.sleep(ENABLED.max_backoff + 1)
        await monitor.executor.wait_idle()
    assert [t for t, _, _ in service.calls] == [ENABLED.max_backoff]


class FailingFirstAttempt(MemoryStore):
    """A journal that cannot write the first ``attempting`` record."""

    failed = False

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        if recovery.state.phase == "attempting" and not self.failed:
            self.failed = True
            raise StoreError("cannot write state file /x: database is locked")
        await super().put_recovery(recovery)


async def test_a_failed_attempt_write_is_started_before_it_fails(autojump_clock):
    """Every ``failed`` follows its ``started``: attempts >= failed + completed."""
    service = FakeService(fleet(active=1))
    policy = Policy(enabled=True, jitter=0, backoff=1)
    async with open_executor(service=service, store=FailingFirstAttempt()) as ex:
        async with ex.subscribe() as events:
            await ex.recover("run-000", None, policy)
            await ex.wait_idle()
            names = [e.name for e in drain(events)]
    assert names.index("started") < names.index("failed")
    stats = ex.statistics()
    assert (stats.attempts, stats.failed, stats.completed) == (2, 1, 1)
    assert len(service.calls) == 1


async def test_a_run_stopped_while_recovering_has_its_successor_left_alone(
    autojump_clock,
):
    """stop_monitoring during a recovery: it completes, its successor is not watched."""
    service = FakeService(fleet(active=1))
    service.rest.corrupt("run-000")
    service.delay = 10.0
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-000")
        await trio.sleep(1)
        monitor.stop_monitoring("run-000")
        await trio.sleep(20)
        assert monitor.statistics().completed == 1
        assert monitor.monitored_runs == frozenset()


async def test_a_watcher_that_lives_for_months_keeps_a_bounded_history(
    autojump_clock,
):
    """100,000 stops of unwatched runs and 12,000 recoveries: what is kept is
    bounded (memory, and the recovery records), not one entry each forever."""
    service = FakeService()
    for index in range(12_000):
        service.rest.add(f"r-{index}", "0001")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for index in range(100_000):
            monitor.stop_monitoring(f"stopped-{index:06d}")
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        for index in range(12_000):
            await monitor.executor.recover(f"r-{index}", None, ENABLED)
        await monitor.executor.wait_idle()
    # 100,000 ids kept would take well over 10 MB.
    assert grown < 4_000_000
    assert len(monitor.executor.recoveries) == 10_000
    assert len(service.calls) == 12_000


async def test_a_discovered_run_the_service_forgot_is_no_longer_watched(
    autojump_clock,
):
    """A run deleted after discovery (404) stops being polled; a run watched by
    name goes on being polled whatever it answers."""
    rest = fleet(active=3)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        await monitor.monitor_all()
        await monitor.monitor_run("run-002")  # named: the user's to stop
        for run_id in ("run-001", "run-002"):
            del rest.runs[run_id]
            rest.fail_polls[run_id] = [
                NotFoundError("GET /x: HTTP 404", status=404) for _ in range(5)
            ]
        await trio.sleep(3 * INTERVAL)
        assert monitor.monitored_runs == {"run-000", "run-002"}
    assert len(rest.poll_times("run-001")) == 1


class FailingRecoveredWrites(MemoryStore):
    """A journal that cannot mark a run restored (a blip, a lease just lost)."""

    async def put_run(self, run: StoredRun) -> None:
        if run.recovered:
            raise StoreError("cannot write state file /x: database is locked")
        await super().put_run(run)


async def test_a_restored_runs_successor_is_watched_when_the_journal_fails(
    autojump_clock, caplog
):
    """The model a restore created is watched even if marking the old run
    restored fails: nobody else would ever poll it."""
    service = FakeService(fleet(active=1))
    service.rest.corrupt("run-000")
    async with open_monitor(
        policy=ENABLED, service=service, store=FailingRecoveredWrites()
    ) as monitor:
        await monitor.monitor_run("run-000")
        await trio.sleep(1)
        assert monitor.monitored_runs == {SUCCESSOR}
    assert any("database is locked" in r.getMessage() for r in caplog.records)
