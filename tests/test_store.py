"""The journal's stores: what they keep, and the files they refuse."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest
import trio

from trio_tinkex_recovery import Policy, RecoveryState, open_executor, open_monitor
from trio_tinkex_recovery._store import (
    LeaseLostError,
    LoadRecord,
    MemoryStore,
    SessionRecord,
    StoredRecovery,
    StoredRun,
    StoreError,
    json_safe,
    open_store,
)

from .conftest import FakeService

ENABLED = Policy(enabled=True, jitter=0)


@pytest.fixture(params=["memory", "sqlite"])
def location(request, tmp_path):
    return ":memory:" if request.param == "memory" else str(tmp_path / "state.db")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_store_keeps_runs_recoveries_sessions_and_loads(location):
    """Everything written comes back from load(); finished loads are not open."""
    async with open_store(location) as store:
        await store.put_run(StoredRun("run-1", {"team": "a"}))
        await store.put_run(StoredRun("run-2", recovered=True, successor="s:train:0"))
        waiting = RecoveryState("run-2", "waiting", attempt=2, error="Boom: x")
        await store.put_recovery(StoredRecovery(waiting, retry_at_wall=123.5))
        await store.put_session(SessionRecord("key-1", "session-1", next_seq=2))
        await store.put_load(LoadRecord("k1", "run-2", 1, "session-1", 0, "p", True))
        await store.put_load(
            LoadRecord("k2", "run-2", 2, "session-1", 1, "p", True, outcome="failed")
        )
        snapshot = await store.load()
    assert snapshot.runs["run-1"].metadata == {"team": "a"}
    assert snapshot.runs["run-2"].successor == "s:train:0"
    assert snapshot.recoveries["run-2"].state == waiting
    assert snapshot.recoveries["run-2"].retry_at_wall == 123.5
    assert snapshot.session == SessionRecord("key-1", "session-1", 2)
    assert [load.key for load in snapshot.open_loads] == ["k1"]
    assert snapshot.open_loads[0].model_id == "session-1:train:0"


async def test_history_records_each_phase_change(location):
    """A recovery's steps are kept in order, one per phase or attempt change."""
    async with open_store(location) as store:
        for state in [
            RecoveryState("run-1", "attempting", attempt=1, checkpoint="c1"),
            RecoveryState("run-1", "attempting", attempt=1, checkpoint="c2"),
            RecoveryState("run-1", "waiting", attempt=1, error="E: x"),
            RecoveryState("run-1", "attempting", attempt=2, checkpoint="c1"),
            RecoveryState("run-1", "done", attempt=2, new_run_id="s:train:0"),
        ]:
            await store.put_recovery(StoredRecovery(state))
        history = await store.history("run-1")
    assert [(h.phase, h.attempt, h.detail) for h in history] == [
        ("attempting", 1, "c1"),
        ("waiting", 1, "E: x"),
        ("attempting", 2, "c1"),
        ("done", 2, "s:train:0"),
    ]


async def test_removing_runs_keeps_pending_recoveries(location):
    """Unwatching forgets the run and its finished recovery, not a pending one."""
    async with open_store(location) as store:
        for run_id, phase in [("a", "done"), ("b", "attempting")]:
            await store.put_run(StoredRun(run_id))
            await store.put_recovery(StoredRecovery(RecoveryState(run_id, phase)))
        await store.remove_runs(["a", "b"])
        snapshot = await store.load()
    assert snapshot.runs == {}
    assert list(snapshot.recoveries) == ["b"]


async def test_sqlite_survives_a_reopen(tmp_path):
    """What one process wrote, the next one reads."""
    path = tmp_path / "deep" / "folder" / "state.db"
    async with open_store(path) as store:
        await store.put_run(StoredRun("run-1", {"n": 1}))
    async with open_store(path) as store:
        snapshot = await store.load()
    assert snapshot.runs["run-1"].metadata == {"n": 1}


async def test_a_second_watcher_is_refused_naming_the_file(tmp_path):
    """Two stores on one file: the second is refused while the first is open."""
    path = tmp_path / "state.db"
    async with open_store(path):
        with pytest.raises(StoreError, match=r"state\.db is in use by another watcher"):
            async with open_store(path):
                pass
    async with open_store(path):  # released on close
        pass


async def test_a_corrupt_file_is_refused_and_left_untouched(tmp_path):
    """Random bytes: a clear error naming the file; not a byte changed."""
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database at all" * 100)
    before = digest(path)
    with pytest.raises(StoreError, match=r"state\.db is not a trio-tinkex-recovery"):
        async with open_store(path):
            pass
    assert digest(path) == before


async def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    """A file from a newer version is refused, never migrated backwards."""
    path = tmp_path / "state.db"
    async with open_store(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    before = digest(path)
    with pytest.raises(StoreError, match=r"newer version.*schema 99"):
        async with open_store(path):
            pass
    assert digest(path) == before


async def test_another_programs_database_is_refused(tmp_path):
    """An SQLite file of something else is not taken over."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    with pytest.raises(StoreError, match="of something else"):
        async with open_store(path):
            pass


async def test_an_uncreatable_state_file_is_a_clear_error(tmp_path):
    """A state file that cannot be created (its folder is a file) names the file."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"not-a-folder/state\.db"):
        async with open_store(blocker / "state.db"):
            pass


def test_only_json_safe_metadata_is_kept():
    """Live objects (a training client) stay out of the journal."""
    assert json_safe({"team": "a", "n": 1, "client": object(), 3: "x"}) == {
        "team": "a",
        "n": 1,
    }


class FailingStore(MemoryStore):
    """A journal whose disk is full: every recovery write fails."""

    async def put_recovery(self, recovery):
        await trio.lowlevel.checkpoint()
        raise StoreError("cannot write state file /x: database or disk is full")


async def test_a_failed_journal_write_sends_nothing(autojump_clock):
    """With a full disk the attempt fails before any restore is sent."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    policy = Policy(enabled=True, jitter=0, max_attempts=2)
    async with open_executor(service=service, store=FailingStore()) as executor:
        await executor.recover("run-1", None, policy)
        await executor.wait_idle()
    assert service.calls == []
    state = executor.recovery_state("run-1")
    assert (state.phase, state.attempt) == ("exhausted", 2)
    assert "disk is full" in state.error


async def test_the_journal_follows_a_recovery(autojump_clock):
    """Each attempt is written before it acts; the outcome at the end."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    service.failures = [RuntimeError("x")]
    store = MemoryStore()
    async with open_executor(service=service, store=store) as executor:
        await executor.recover("run-1", None, ENABLED, metadata={"team": "a"})
        await executor.wait_idle()
    history = await store.history("run-1")
    assert [(h.phase, h.attempt) for h in history] == [
        ("attempting", 1),
        ("waiting", 1),
        ("attempting", 2),
        ("done", 2),
    ]
    snapshot = await store.load()
    assert snapshot.recoveries["run-1"].metadata == {"team": "a"}


async def test_a_waiting_recovery_resumes_after_what_is_left_of_its_wait(
    autojump_clock,
):
    """Resumed from the journal: attempt 3 starts when the stored wait ends."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    stored = StoredRecovery(
        RecoveryState("run-1", "waiting", attempt=2, error="E: x"),
        retry_at_wall=time.time() + 30,
    )
    async with open_executor(service=service) as executor:
        start = trio.current_time()
        await executor.resume(stored, None, ENABLED)
        await trio.sleep(1)
        assert executor.recovery_state("run-1").phase == "waiting"
        await executor.wait_idle()
    [(at, _, _)] = service.calls
    assert 28 < at - start <= 30
    assert executor.recovery_state("run-1").attempt == 3


async def test_an_attempting_recovery_resumes_at_its_attempt(autojump_clock):
    """Attempts count across restarts: attempt 3 of 3 is the last one."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    service.failures = [RuntimeError("x")]
    stored = StoredRecovery(RecoveryState("run-1", "attempting", attempt=3))
    async with open_executor(service=service) as executor:
        await executor.resume(stored, None, ENABLED)
        await executor.wait_idle()
    state = executor.recovery_state("run-1")
    assert (state.phase, state.attempt) == ("exhausted", 3)
    assert len(service.calls) == 1


async def test_a_restarted_monitor_watches_the_stored_runs(tmp_path):
    """Runs watched by one monitor (SQLite file) are watched again by the next
    process's monitor, with their JSON metadata."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    service.rest.add("run-2", "0001")
    path = tmp_path / "state.db"
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await monitor.monitor_run("run-1", metadata={"team": "a", "live": object()})
        await monitor.monitor_run("run-2")
    with trio.fail_after(10):
        async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
            assert monitor.monitored_runs == {"run-1", "run-2"}
            async with monitor.subscribe() as events:
                first = await events.receive()
    assert first.name == "polled"
    expected = {"run-1": {"team": "a"}, "run-2": {}}[first.run_id]
    assert {k: first.metadata[k] for k in expected} == expected
    assert "live" not in first.metadata


async def test_a_restarted_monitor_never_restores_a_recovered_run_again(
    autojump_clock,
):
    """Restored before the restart: the successor is watched, no second restore."""
    service = FakeService()
    service.rest.add("run-1", "0001", corrupted=True)
    path = MemoryStore()  # the same journal for both monitors
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        assert monitor.monitored_runs == {"session-1:train:1"}
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await trio.sleep(100)
        assert monitor.monitored_runs == {"session-1:train:1"}
    assert len(service.calls) == 1


async def test_a_restarted_monitor_resumes_a_pending_recovery(autojump_clock):
    """Interrupted while waiting to retry: the next monitor goes on at attempt 2."""
    service = FakeService()
    service.rest.add("run-1", "0001", corrupted=True)
    service.failures = [RuntimeError("x")]
    path = MemoryStore()  # the same journal for both monitors
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        assert monitor.executor.recovery_state("run-1").phase == "waiting"
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await trio.sleep(10)
        state = monitor.executor.recovery_state("run-1")
        assert (state.phase, state.attempt) == ("done", 2)
        assert monitor.monitored_runs == {"session-1:train:1"}
        # Resumed, not detected (and handed over) a second time.
        assert monitor.statistics().detected == 0
    assert len(service.calls) == 2


async def test_an_exhausted_run_is_not_retried_after_a_restart(
    autojump_clock,
):
    """Attempts never exceed max_attempts across restarts."""
    service = FakeService()
    service.rest.add("run-1", corrupted=True)  # no checkpoint: exhausted at once
    path = MemoryStore()  # the same journal for both monitors
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        assert monitor.executor.recovery_state("run-1").phase == "exhausted"
    # Judged by the service: an attempt lists the run's checkpoints first;
    # with none, the one attempt exhausts the run.
    assert service.rest.listed == ["run-1"]
    async with open_monitor(policy=ENABLED, service=service, store=path) as monitor:
        await trio.sleep(100)
        assert monitor.monitored_runs == frozenset()
    assert service.rest.listed == ["run-1"]  # no attempt after the restart
    assert service.calls == []


class LeaseTakenStore(MemoryStore):
    """A shared journal in which another replica has just taken the run."""

    async def put_recovery(self, recovery):
        await trio.lowlevel.checkpoint()
        raise LeaseLostError("run-1 is now owned by replica b")


async def test_a_lost_lease_abandons_the_attempt_before_any_restore(autojump_clock):
    """A fenced write that fails: nothing sent, not exhausted, no retry."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    failures = []
    policy = Policy(
        enabled=True, jitter=0, on_failure=lambda *args: failures.append(args)
    )
    async with open_executor(service=service, store=LeaseTakenStore()) as executor:
        await executor.recover("run-1", None, policy)
        await executor.wait_idle()
    assert service.calls == []
    assert executor.recovery_state("run-1").phase == "interrupted"
    assert executor.statistics().exhausted == 0
    assert failures == []


async def test_a_done_recovery_marks_its_run_restored_at_once(location):
    """Done and 'restored in this episode' are one write: no crash splits them."""
    async with open_store(location) as store:
        await store.put_run(StoredRun("run-1"))
        done = RecoveryState("run-1", "done", attempt=1, new_run_id="s:train:0")
        await store.put_recovery(StoredRecovery(done))
        run = (await store.load()).runs["run-1"]
    assert (run.recovered, run.successor) == (True, "s:train:0")
