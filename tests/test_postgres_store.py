"""The PostgreSQL store against a real server: what it keeps, what it refuses."""

from __future__ import annotations

import psycopg
import pytest
import trio

from trio_tinkex_recovery import Policy, RecoveryState, open_executor
from trio_tinkex_recovery._store import (
    LeaseLostError,
    LeasingStore,
    LoadRecord,
    SessionRecord,
    StoredRecovery,
    StoredRun,
    StoreError,
    open_store,
)
from trio_tinkex_recovery._store._postgres import SCHEMA, open_postgres_store

from .conftest import FakeService


async def held(store, *run_ids):
    """``store`` claims ``run_ids`` (just added) so that it may write about them."""
    for run_id in run_ids:
        await store.put_run(StoredRun(run_id))
    await store.renew()
    claims = await store.claim(len(run_ids))
    assert {c.run_id for c in claims} == set(run_ids)


async def test_a_store_keeps_runs_recoveries_sessions_and_loads(postgres_dsn):
    """Everything written comes back from load(); finished loads are not open."""
    async with open_store(postgres_dsn) as store:
        await held(store, "run-2")
        await store.put_run(StoredRun("run-1", {"team": "a"}))  # nobody holds it
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


async def test_only_the_shared_store_is_a_leasing_store(postgres_dsn, tmp_path):
    """Replicas share PostgreSQL through leases; SQLite and memory have none."""
    async with open_store(postgres_dsn) as shared:
        assert isinstance(shared, LeasingStore)
    for location in (":memory:", str(tmp_path / "state.db")):
        async with open_store(location) as alone:
            assert not isinstance(alone, LeasingStore)


async def test_history_records_each_phase_change(postgres_dsn):
    """A recovery's steps are kept in order; a completed one marks the run restored."""
    async with open_store(postgres_dsn) as store:
        await held(store, "run-1")
        for state in [
            RecoveryState("run-1", "attempting", attempt=1, checkpoint="c1"),
            RecoveryState("run-1", "attempting", attempt=1, checkpoint="c2"),
            RecoveryState("run-1", "waiting", attempt=1, error="E: x"),
            RecoveryState("run-1", "attempting", attempt=2, checkpoint="c1"),
            RecoveryState("run-1", "done", attempt=2, new_run_id="s:train:0"),
        ]:
            await store.put_recovery(StoredRecovery(state))
        history = await store.history("run-1")
        run = (await store.load()).runs["run-1"]
    assert [(h.phase, h.attempt, h.detail) for h in history] == [
        ("attempting", 1, "c1"),
        ("waiting", 1, "E: x"),
        ("attempting", 2, "c1"),
        ("done", 2, "s:train:0"),
    ]
    assert (run.recovered, run.successor) == (True, "s:train:0")


async def test_removing_runs_keeps_pending_recoveries(postgres_dsn):
    """Unwatching forgets the run and its finished recovery, not a pending one."""
    async with open_store(postgres_dsn) as store:
        await held(store, "a", "b")
        for run_id, phase in [("a", "done"), ("b", "attempting")]:
            await store.put_recovery(StoredRecovery(RecoveryState(run_id, phase)))
        await store.remove_runs(["a", "b"])
        snapshot = await store.load()
    assert snapshot.runs == {}
    assert list(snapshot.recoveries) == ["b"]


async def test_what_one_replica_wrote_the_next_reads(postgres_dsn):
    """A second store on the database (another process) reads the runs."""
    async with open_store(postgres_dsn) as store:
        await store.put_run(StoredRun("run-1", {"n": 1}))
    async with open_store(postgres_dsn, readonly=True) as store:
        snapshot = await store.load()
    assert snapshot.runs["run-1"].metadata == {"n": 1}


async def test_a_write_about_a_run_held_elsewhere_is_fenced(postgres_dsn):
    """Writes about a run taken over raise LeaseLostError and change nothing."""
    async with (
        open_store(postgres_dsn, lease=0.5) as a,
        open_store(postgres_dsn) as b,
    ):
        await held(a, "run-1")
        await trio.sleep(0.6)  # a stops renewing: its lease expires (server clock)
        [claim] = await b.claim(1)
        assert claim.previous == a.replica_id
        record = StoredRecovery(RecoveryState("run-1", "attempting", attempt=1))
        with pytest.raises(LeaseLostError, match=f"lost to replica {b.replica_id}"):
            await a.put_recovery(record)
        with pytest.raises(LeaseLostError):
            await a.put_load(LoadRecord("k", "run-1", 1, "s", 0, "p", True))
        with pytest.raises(LeaseLostError):
            await a.put_run(StoredRun("run-1", {"by": "a"}))
        snapshot = await b.load()
        with pytest.raises(LeaseLostError, match="not held by replica"):
            await b.put_recovery(StoredRecovery(RecoveryState("other", "queued")))
    assert snapshot.recoveries == {}
    assert snapshot.runs["run-1"].metadata == {}


async def test_the_old_owner_sends_nothing_after_a_takeover(postgres_dsn):
    """An executor whose replica lost the run abandons the attempt: no restore."""
    service = FakeService()
    service.rest.add("run-1", "0001")
    async with (
        open_store(postgres_dsn, lease=0.5) as a,
        open_store(postgres_dsn) as b,
    ):
        await held(a, "run-1")
        await trio.sleep(0.6)
        await b.claim(1)
        async with open_executor(service=service, store=a) as executor:
            await executor.recover("run-1", None, Policy(enabled=True, jitter=0))
            await executor.wait_idle()
    assert service.calls == []
    assert executor.recovery_state("run-1").phase == "interrupted"


async def test_an_unreachable_database_is_a_clear_error_without_the_password():
    """Nothing listens there: the error names host and database, never the password."""
    dsn = "postgresql://alice:s3cret-pw@127.0.0.1:9/prod?connect_timeout=2"
    with pytest.raises(StoreError) as caught:
        async with open_store(dsn):
            pass
    message = str(caught.value)
    assert "postgresql://alice@127.0.0.1:9/prod" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(caught.value.__cause__)


async def test_a_newer_schema_is_refused_and_left_untouched(postgres_dsn):
    """A database written by a newer version is refused, never migrated back."""
    async with open_store(postgres_dsn):
        pass
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"UPDATE {SCHEMA}.meta SET value = '99'")
    with pytest.raises(StoreError, match=r"newer version.*schema 99"):
        async with open_store(postgres_dsn):
            pass
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute(f"SELECT value FROM {SCHEMA}.meta").fetchone() == ("99",)


async def test_another_programs_schema_is_refused(postgres_dsn):
    """A schema of the same name without our version table is not taken over."""
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {SCHEMA}")
        db.execute(f"CREATE TABLE {SCHEMA}.users (name TEXT)")
    with pytest.raises(StoreError, match="of something else"):
        async with open_store(postgres_dsn):
            pass


async def test_status_of_an_empty_database_says_so(postgres_dsn):
    """Read-only, a database without our schema is an error, and is not created."""
    with pytest.raises(StoreError, match="holds no trio-tinkex-recovery state"):
        async with open_store(postgres_dsn, readonly=True):
            pass
    with psycopg.connect(postgres_dsn) as db:
        assert (
            db.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
            ).fetchone()
            is None
        )


def active_sleeps(dsn: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_cancelled_call_is_cancelled_on_the_server(postgres_dsn):
    """A Trio cancel abandons the call and stops its statement on the server:
    cancelled only once the server is seen running it."""

    async def server_shows(running: bool) -> None:
        with trio.fail_after(120):  # a guard against a hang, not a budget
            while True:  # the server's view, polled
                if bool(await trio.to_thread.run_sync(active_sleeps, postgres_dsn)) is (
                    running
                ):
                    return
                await trio.sleep(0.05)

    store = await open_postgres_store(postgres_dsn)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                store._run, "read", lambda db, _: db.execute("SELECT pg_sleep(300)")
            )
            await server_shows(True)
            nursery.cancel_scope.cancel()  # the call returns at once: abandoned
        await server_shows(False)
    finally:
        await store.aclose()


async def test_a_statement_past_the_timeout_is_ended_by_the_server(postgres_dsn):
    """statement_timeout: the server ends a slow statement; a retryable StoreError."""
    store = await open_postgres_store(postgres_dsn, statement_timeout=0.2)
    try:
        with pytest.raises(StoreError, match="statement timeout") as caught:
            await store._run("read", lambda db, _: db.execute("SELECT pg_sleep(5)"))
        assert caught.value.retryable
    finally:
        await store.aclose()
