"""The PostgreSQL store: one journal shared by several replicas, with leases.

psycopg 3's async API needs asyncio, so the store uses its synchronous
`psycopg_pool.ConnectionPool` from worker threads (`trio.to_thread`),
behind a `trio.CapacityLimiter` as wide as the pool.  Every call is one
transaction.  The server ends a statement that runs longer than
``statement_timeout``; a call whose Trio task is cancelled is abandoned and
its statement cancelled on the server.  The tables live in their own
schema, ``trio_tinkex_recovery``, versioned with forward-only migrations
like the SQLite file; a schema written by a newer version, or one that is
not ours, is refused and left untouched.

Replicas share the work through leases, PostgreSQL's transactions being the
only source of truth and its clock (``now()``) the only clock:

- each run has an ``owner`` (a replica id), a ``lease_until`` and a fencing
  ``token`` that grows on every claim;
- `PostgresStore.renew` records that this replica is alive (table
  ``replicas``) and extends the leases it still holds;
  `PostgresStore.claim` takes free or expired runs (``FOR UPDATE SKIP
  LOCKED``); `PostgresStore.give_back` and `PostgresStore.release` let go;
- every journal write about a run is fenced: it locks the run's row and
  checks (owner, token, unexpired lease) in the same transaction, and
  raises `LeaseLostError` otherwise.  Adding a run nobody holds is not:
  some replica claims it at its next renewal.

The lease keeper (`_leases`) decides when to call what; this module only
keeps the database consistent.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from .._state import RecoveryState
from ._base import (
    HistoryEntry,
    LeaseLostError,
    LoadRecord,
    SessionRecord,
    Snapshot,
    StoredRecovery,
    StoredRun,
    StoreError,
    history_entry,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    import psycopg
    import psycopg_pool

__all__ = [
    "DEFAULT_LEASE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Claim",
    "Owner",
    "PostgresStore",
    "Renewal",
    "is_dsn",
    "open_postgres_store",
]

T = TypeVar("T")

#: Seconds a lease lasts unless told otherwise (``watch --lease``).
DEFAULT_LEASE: Final = 30.0
#: The schema the tables live in.
SCHEMA: Final = "trio_tinkex_recovery"
#: The schema version this version writes; it migrates every older one.
SCHEMA_VERSION: Final = 1
#: Connections per store (and worker threads at once).
POOL_SIZE: Final = 4

#: Forward-only migrations: ``_MIGRATIONS[n]`` takes a schema from n to n + 1.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        metadata JSONB NOT NULL,
        recovered BOOLEAN NOT NULL DEFAULT false,
        successor TEXT,
        owner TEXT,
        lease_until TIMESTAMPTZ,
        token BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_owner ON runs (owner);
    CREATE TABLE recoveries (
        run_id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        checkpoint TEXT,
        retry_at_wall DOUBLE PRECISION,
        new_run_id TEXT,
        error TEXT,
        metadata JSONB NOT NULL
    );
    CREATE TABLE sessions (
        replica TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        session_id TEXT,
        next_seq INTEGER NOT NULL
    );
    CREATE TABLE loads (
        key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        model_seq_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        optimizer BOOLEAN NOT NULL,
        request_id TEXT,
        outcome TEXT,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE history (
        id BIGSERIAL PRIMARY KEY,
        run_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        phase TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        detail TEXT
    );
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        last_seen TIMESTAMPTZ NOT NULL,
        lease DOUBLE PRECISION NOT NULL
    );
    """,
)

# The server's clock, moved by ``time_shift`` seconds (tests only).
_NOW: Final = "(now() + %(shift)s * interval '1 second')"
_LEASE: Final = "%(lease)s * interval '1 second'"
# Any two processes migrating at once take this lock (a hash of the schema).
_MIGRATION_LOCK: Final = 0x7474_726B


def is_dsn(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL database rather than a file."""
    return location.startswith(("postgresql://", "postgres://"))


@attrs.frozen
class Renewal:
    """What one renewal found."""

    #: The runs this replica holds now, with their fencing tokens.
    held: Mapping[str, int]
    #: Replicas alive (this one included).
    replicas: int
    #: Runs in the store.
    runs: int


@attrs.frozen
class Claim:
    """A run this replica has just claimed."""

    run_id: str
    #: Its new fencing token.
    token: int
    #: The replica whose lease had expired (a takeover), or ``None``.
    previous: str | None


@attrs.frozen
class Owner:
    """Who holds a run, for ``status``."""

    replica: str
    #: Seconds until the lease expires (negative: expired).
    expires_in: float


class _Abandoned(Exception):
    """The call was cancelled before its worker thread began it."""


class _InFlight:
    """One call's worker thread: its connection, so that it can be cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.abandoned = False

    def begin(self, conn: psycopg.Connection[Any]) -> None:
        """Called by the worker: raise `_Abandoned` if its caller gave up."""
        with self.lock:
            if self.abandoned:
                raise _Abandoned
            self.conn = conn

    def end(self) -> None:
        with self.lock:
            self.conn = None

    def abandon(self) -> None:
        """Called by the caller, cancelled: nothing starts, what runs is stopped."""
        with self.lock:
            self.abandoned = True
            busy = self.conn is not None
        if busy:
            trio.lowlevel.start_thread_soon(self._cancel, _ignore)

    def _cancel(self) -> None:
        with self.lock:
            if self.conn is None:
                return
            try:
                self.conn.cancel_safe(timeout=5)
            except Exception:  # best effort: the statement times out anyway
                pass


class PostgresStore:
    """A `Store` in a PostgreSQL database; made by `open_store` with a DSN.

    One store is one replica: it has an id, holds leases on runs, and
    fences every write about a run by its lease.
    """

    def __init__(
        self,
        location: str,
        pool: psycopg_pool.ConnectionPool[Any],
        *,
        lease: float = DEFAULT_LEASE,
        readonly: bool = False,
        secret: str | None = None,
        time_shift: Callable[[], float] | None = None,
    ) -> None:
        self.location = location
        self.lease = lease
        self.readonly = readonly
        self.replica_id = _replica_id()
        self._pool = pool
        self._secret = secret
        self._shift = time_shift or (lambda: 0.0)
        self._limiter = trio.CapacityLimiter(POOL_SIZE)
        self._held: dict[str, int] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresStore {self.location!r} replica={self.replica_id}>"

    @property
    def held(self) -> Mapping[str, int]:
        """The runs this replica holds, with their fencing tokens."""
        return dict(self._held)

    def holds(self, run_id: str) -> bool:
        """Whether this replica believes it holds ``run_id``'s lease."""
        return run_id in self._held

    # -- the Store protocol -------------------------------------------------

    async def load(self) -> Snapshot:
        replica = self.replica_id
        return await self._run("read", lambda db, _: _read_snapshot(db, replica))

    async def put_run(self, run: StoredRun) -> None:
        token = self._held.get(run.run_id)
        values = {
            "run_id": run.run_id,
            "metadata": json.dumps(dict(run.metadata)),
            "recovered": run.recovered,
            "successor": run.successor,
        }

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            if token is None:
                # A run nobody holds here: added for whichever replica claims
                # it; a run some replica holds is theirs to change.
                db.execute(
                    "INSERT INTO runs (run_id, metadata, recovered, successor, "
                    "lease_until) VALUES (%(run_id)s, %(metadata)s, %(recovered)s, "
                    f"%(successor)s, {_NOW}) ON CONFLICT (run_id) DO NOTHING",
                    {**values, "shift": shift},
                )
                return
            self._fence(db, run.run_id, token, shift)
            db.execute(
                "UPDATE runs SET metadata = %(metadata)s, recovered = %(recovered)s, "
                "successor = %(successor)s WHERE run_id = %(run_id)s",
                values,
            )

        await self._run("write", write)

    async def remove_runs(self, run_ids: Collection[str]) -> None:
        ids = list(run_ids)

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            db.execute("DELETE FROM runs WHERE run_id = ANY(%(ids)s)", {"ids": ids})
            db.execute(
                "DELETE FROM recoveries WHERE run_id = ANY(%(ids)s) AND phase NOT IN "
                "('queued', 'attempting', 'waiting')",
                {"ids": ids},
            )

        await self._run("write", write)

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        state = recovery.state
        token = self._token(state.run_id)
        now = time.time()

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            self._fence(db, state.run_id, token, shift)
            row = db.execute(
                "SELECT * FROM recoveries WHERE run_id = %s", (state.run_id,)
            ).fetchone()
            previous = _recovery(row) if row is not None else None
            db.execute(
                "INSERT INTO recoveries VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run_id) DO UPDATE SET phase = EXCLUDED.phase, "
                "attempt = EXCLUDED.attempt, checkpoint = EXCLUDED.checkpoint, "
                "retry_at_wall = EXCLUDED.retry_at_wall, "
                "new_run_id = EXCLUDED.new_run_id, error = EXCLUDED.error, "
                "metadata = EXCLUDED.metadata",
                (
                    state.run_id,
                    state.phase,
                    state.attempt,
                    state.checkpoint,
                    recovery.retry_at_wall,
                    state.new_run_id,
                    state.error,
                    json.dumps(dict(recovery.metadata)),
                ),
            )
            if state.phase == "done":
                # Restored in this episode, in the same transaction: a replica
                # that takes the run over next never restores it again.
                db.execute(
                    "UPDATE runs SET recovered = true, successor = %s "
                    "WHERE run_id = %s",
                    (state.new_run_id, state.run_id),
                )
            entry = history_entry(previous, recovery, now)
            if entry is not None:
                db.execute(
                    "INSERT INTO history (run_id, at, phase, attempt, detail) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (entry.run_id, entry.at, entry.phase, entry.attempt, entry.detail),
                )

        await self._run("write", write)

    async def put_session(self, session: SessionRecord) -> None:
        # Each replica has its own session: its row is nobody else's to write.
        def write(db: psycopg.Connection[Any], shift: float) -> None:
            db.execute(
                "INSERT INTO sessions VALUES (%s, %s, %s, %s) ON CONFLICT (replica) "
                "DO UPDATE SET key = EXCLUDED.key, session_id = EXCLUDED.session_id, "
                "next_seq = EXCLUDED.next_seq",
                (self.replica_id, session.key, session.session_id, session.next_seq),
            )

        await self._run("write", write)

    async def put_load(self, load: LoadRecord) -> None:
        token = self._token(load.run_id)
        now = time.time()

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            self._fence(db, load.run_id, token, shift)
            db.execute(
                "INSERT INTO loads VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET request_id = EXCLUDED.request_id, "
                "outcome = EXCLUDED.outcome",
                (
                    load.key,
                    load.run_id,
                    load.attempt,
                    load.session_id,
                    load.model_seq_id,
                    load.path,
                    load.optimizer,
                    load.request_id,
                    load.outcome,
                    now,
                ),
            )

        await self._run("write", write)

    async def history(self, run_id: str | None = None) -> list[HistoryEntry]:
        def read(db: psycopg.Connection[Any], shift: float) -> list[HistoryEntry]:
            rows = db.execute(
                "SELECT run_id, at, phase, attempt, detail FROM history "
                "WHERE %(run)s::text IS NULL OR run_id = %(run)s ORDER BY id",
                {"run": run_id},
            ).fetchall()
            return [HistoryEntry(*row) for row in rows]

        return await self._run("read", read)

    async def aclose(self) -> None:
        """Release this replica's leases (best effort) and close the pool."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True):
            if not self.readonly:
                with trio.move_on_after(5):
                    try:
                        await self.release()
                    except StoreError:
                        pass  # the leases expire by themselves
            self._closed = True
            async with self._limiter:
                await trio.to_thread.run_sync(self._pool.close)

    # -- leases ----------------------------------------------------------------

    async def renew(self) -> Renewal:
        """Say this replica is alive and extend every lease it still holds.

        A lease that expired before this call is not renewed (the run may
        be claimed again, with a new token).  Replicas gone for ten leases
        are forgotten.
        """
        params = {"me": self.replica_id, "lease": self.lease}

        def write(db: psycopg.Connection[Any], shift: float) -> Renewal:
            p = {**params, "shift": shift}
            db.execute(
                f"INSERT INTO replicas VALUES (%(me)s, {_NOW}, %(lease)s) "
                "ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen, "
                "lease = EXCLUDED.lease",
                p,
            )
            held = db.execute(
                f"UPDATE runs SET lease_until = {_NOW} + {_LEASE} "
                f"WHERE owner = %(me)s AND lease_until > {_NOW} "
                "RETURNING run_id, token",
                p,
            ).fetchall()
            db.execute(
                f"DELETE FROM replicas WHERE last_seen + 10 * lease * interval "
                f"'1 second' < {_NOW}",
                p,
            )
            (replicas,) = _one(
                db.execute(
                    "SELECT count(*) FROM replicas WHERE last_seen + lease * "
                    f"interval '1 second' > {_NOW}",
                    p,
                )
            )
            (runs,) = _one(db.execute("SELECT count(*) FROM runs"))
            return Renewal(held=dict(held), replicas=max(replicas, 1), runs=runs)

        renewal = await self._run("renew leases in", write)
        self._held = dict(renewal.held)
        return renewal

    async def claim(self, limit: int, *, exclude: Collection[str] = ()) -> list[Claim]:
        """Take runs nobody acts on: every orphan, and free runs up to ``limit``.

        Orphans (a lease that expired, a run left free for a third of a
        lease) are taken whatever the fair share, so that a replica that
        died has its runs polled again at the next renewal of any other;
        the share is restored by giving back later.  Runs that are free
        (added, or given back) are taken up to ``limit``.  Runs in
        ``exclude`` are left alone.
        """
        params = {
            "me": self.replica_id,
            "lease": self.lease,
            "limit": max(0, limit),
            "exclude": list(exclude),
        }
        take = (
            "UPDATE runs SET owner = %(me)s, "
            f"lease_until = {_NOW} + {_LEASE}, token = runs.token + 1 "
            "FROM free WHERE runs.run_id = free.run_id "
            "RETURNING runs.run_id, runs.token, free.owner"
        )

        def write(db: psycopg.Connection[Any], shift: float) -> list[Claim]:
            p = {**params, "shift": shift}
            rows = db.execute(
                "WITH free AS (SELECT run_id, owner FROM runs "
                f"WHERE ((owner IS NOT NULL AND lease_until <= {_NOW}) "
                f"OR (owner IS NULL AND lease_until <= {_NOW} - {_LEASE} / 3)) "
                "AND run_id <> ALL(%(exclude)s) "
                f"FOR UPDATE SKIP LOCKED) {take}",
                p,
            ).fetchall()
            p["limit"] = max(0, limit - len(rows))
            if p["limit"]:
                rows += db.execute(
                    "WITH free AS (SELECT run_id, owner FROM runs "
                    "WHERE owner IS NULL AND run_id <> ALL(%(exclude)s) "
                    "ORDER BY lease_until, run_id "
                    f"LIMIT %(limit)s FOR UPDATE SKIP LOCKED) {take}",
                    p,
                ).fetchall()
            return [Claim(run_id, token, previous) for run_id, token, previous in rows]

        claims = await self._run("claim runs in", write)
        for claim in claims:
            self._held[claim.run_id] = claim.token
        return claims

    async def give_back(self, run_ids: Collection[str]) -> None:
        """Let other replicas claim ``run_ids`` (stop acting on them first)."""
        tokens = {r: self._held.pop(r) for r in run_ids if r in self._held}
        if not tokens:
            await trio.lowlevel.checkpoint()
            return

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            db.execute(
                f"UPDATE runs SET owner = NULL, lease_until = {_NOW} "
                "WHERE owner = %(me)s AND run_id = ANY(%(ids)s)",
                {"me": self.replica_id, "ids": list(tokens), "shift": shift},
            )

        await self._run("give back runs in", write)

    async def release(self) -> None:
        """Give back every lease and leave the replicas (a clean shutdown)."""
        self._held.clear()

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            db.execute(
                f"UPDATE runs SET owner = NULL, lease_until = {_NOW} "
                "WHERE owner = %(me)s",
                {"me": self.replica_id, "shift": shift},
            )
            db.execute("DELETE FROM replicas WHERE id = %s", (self.replica_id,))

        await self._run("release leases in", write)

    def forget(self, run_ids: Collection[str] | None = None) -> None:
        """Stop writing about runs whose leases may have expired (no database call).

        With ``None``, every run.
        """
        if run_ids is None:
            self._held.clear()
        for run_id in run_ids or ():
            self._held.pop(run_id, None)

    async def runs(self, run_ids: Collection[str]) -> Snapshot:
        """The stored runs ``run_ids``, their recoveries and restores in doubt.

        With this replica's session.
        """
        ids = list(run_ids)
        replica = self.replica_id
        return await self._run("read", lambda db, _: _read_snapshot(db, replica, ids))

    async def owners(self) -> dict[str, Owner]:
        """Who holds each run, with the seconds left on its lease."""

        def read(db: psycopg.Connection[Any], shift: float) -> dict[str, Owner]:
            rows = db.execute(
                "SELECT run_id, owner, "
                f"EXTRACT(EPOCH FROM lease_until - {_NOW})::float8 "
                "FROM runs WHERE owner IS NOT NULL",
                {"shift": shift},
            ).fetchall()
            return {run: Owner(owner, left) for run, owner, left in rows}

        return await self._run("read", read)

    # -- internals -------------------------------------------------------------

    def _token(self, run_id: str) -> int:
        token = self._held.get(run_id)
        if token is None:
            raise LeaseLostError(
                f"run {run_id} is not held by replica {self.replica_id} of "
                f"{self.location}; its owner writes about it"
            )
        return token

    def _fence(
        self, db: psycopg.Connection[Any], run_id: str, token: int, shift: float
    ) -> None:
        """Lock the run's row; raise `LeaseLostError` unless our lease holds."""
        row = db.execute(
            "SELECT owner, token FROM runs WHERE run_id = %(run)s "
            f"AND lease_until > {_NOW} FOR SHARE",
            {"run": run_id, "shift": shift},
        ).fetchone()
        if row is None or tuple(row) != (self.replica_id, token):
            raise LeaseLostError(
                f"run {run_id}: the lease of replica {self.replica_id} in "
                f"{self.location} was lost"
                + (f" to replica {row[0]}" if row is not None and row[0] else "")
            )

    async def _run(
        self,
        what: str,
        fn: Callable[[psycopg.Connection[Any], float], T],
    ) -> T:
        """Run ``fn`` in one transaction, in a worker thread.

        Cancelled, the thread is abandoned and its statement cancelled on
        the server.
        """
        import psycopg

        if self._closed:
            raise trio.ClosedResourceError(f"database {self.location} is closed")
        shift = self._shift()
        flight = _InFlight()

        def call() -> T:
            try:
                with self._pool.connection() as db:
                    flight.begin(db)
                    try:
                        with db.transaction():
                            return fn(db, shift)
                    finally:
                        flight.end()
            except psycopg.Error as exc:
                raise StoreError(
                    f"cannot {what} database {self.location}: {self._clean(exc)}"
                ) from None

        try:
            return await trio.to_thread.run_sync(
                call, limiter=self._limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            # A write that has not begun never will (a renewal must not
            # land after the release that followed it).
            flight.abandon()
            raise

    def _clean(self, exc: BaseException) -> str:
        return _clean(exc, self._secret)


def _ignore(result: object) -> None:
    """Discard what a fire-and-forget thread returned."""


def _clean(exc: BaseException, secret: str | None) -> str:
    """One line about ``exc``, without the password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text


def _one(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cursor.fetchone()
    assert row is not None
    return tuple(row)


def _replica_id() -> str:
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _recovery(row: Any) -> StoredRecovery:
    run_id, phase, attempt, checkpoint, retry_at_wall, new_run_id, error, meta = row
    return StoredRecovery(
        state=RecoveryState(
            run_id=run_id,
            phase=phase,
            attempt=attempt,
            checkpoint=checkpoint,
            new_run_id=new_run_id,
            error=error,
        ),
        retry_at_wall=retry_at_wall,
        metadata=meta,
    )


def _read_snapshot(
    db: psycopg.Connection[Any], replica: str, ids: list[str] | None = None
) -> Snapshot:
    where = "" if ids is None else " WHERE run_id = ANY(%(ids)s)"
    params = {"ids": ids}
    runs = {
        run_id: StoredRun(
            run_id=run_id, metadata=meta, recovered=recovered, successor=successor
        )
        for run_id, meta, recovered, successor in db.execute(
            f"SELECT run_id, metadata, recovered, successor FROM runs{where}", params
        )
    }
    recoveries = {
        row[0]: _recovery(row)
        for row in db.execute(f"SELECT * FROM recoveries{where}", params)
    }
    row = db.execute(
        "SELECT key, session_id, next_seq FROM sessions WHERE replica = %s",
        (replica,),
    ).fetchone()
    session = SessionRecord(*row) if row is not None else None
    loads = tuple(
        LoadRecord(
            key=row[0],
            run_id=row[1],
            attempt=row[2],
            session_id=row[3],
            model_seq_id=row[4],
            path=row[5],
            optimizer=row[6],
            request_id=row[7],
            outcome=row[8],
        )
        for row in db.execute(
            "SELECT key, run_id, attempt, session_id, model_seq_id, path, optimizer, "
            "request_id, outcome FROM loads WHERE outcome IS NULL"
            + ("" if ids is None else " AND run_id = ANY(%(ids)s)")
            + " ORDER BY created",
            params,
        )
    )
    return Snapshot(runs=runs, recoveries=recoveries, session=session, open_loads=loads)


def describe_dsn(dsn: str) -> tuple[str, str | None]:
    """Where a DSN points, for messages (never its password), and the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # any parse error: name nothing
        return "postgresql://(a DSN that cannot be parsed)", None
    password = parts.get("password")
    user = parts.get("user")
    host = str(parts.get("host") or "")
    port = parts.get("port")
    where = "" if host.startswith("/") else host
    if where and port:
        where += f":{port}"
    text = f"postgresql://{f'{user}@' if user else ''}{where}/{parts.get('dbname', '')}"
    if host.startswith("/"):
        text += f"?host={host}"
    return text, str(password) if password else None


def _migrate(db: psycopg.Connection[Any], location: str, readonly: bool) -> None:
    """Create or migrate the schema; refuse one that is newer or not ours."""
    with db.transaction():
        if not readonly:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        tables = {
            name
            for (name,) in db.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = %s",
                (SCHEMA,),
            )
        }
        version = 0
        if tables and "meta" not in tables:
            raise StoreError(
                f"database {location} has a schema {SCHEMA} of something else "
                "(no schema version); it was left untouched"
            )
        if tables:
            row = db.execute(
                f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'"
            ).fetchone()
            try:
                version = int(row[0]) if row is not None else -1
            except ValueError:
                version = -1
            if version < 0:
                raise StoreError(
                    f"database {location} has no valid schema version; it was "
                    "left untouched"
                )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {location} was written by a newer version of "
                f"trio-tinkex-recovery (schema {version}; this version reads up "
                f"to {SCHEMA_VERSION}); upgrade, or pass another --state"
            )
        if readonly:
            if version == 0:
                raise StoreError(
                    f"database {location} holds no trio-tinkex-recovery state "
                    "(run watch with it once to create it)"
                )
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"database {location} has schema {version}; this version "
                    f"reads schema {SCHEMA_VERSION} (run watch with it once to "
                    "create or migrate it)"
                )
            return
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        db.execute(f"SET LOCAL search_path = {SCHEMA}")
        for step in range(version, SCHEMA_VERSION):
            db.execute(_MIGRATIONS[step].encode())
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                "DO UPDATE SET value = EXCLUDED.value",
                (str(step + 1),),
            )


async def open_postgres_store(
    dsn: str,
    *,
    readonly: bool = False,
    lease: float = DEFAULT_LEASE,
    statement_timeout: float = 10.0,
    connect_timeout: float = 10.0,
    time_shift: Callable[[], float] | None = None,
) -> PostgresStore:
    """Open the store in the database ``dsn`` names (creating its schema).

    Args:
        dsn: A ``postgresql://`` URL (libpq's forms all work).
        readonly: Read beside running replicas (``status``): the schema
            must exist; nothing is created, claimed or written.
        lease: Seconds a lease lasts (renewed every third of it).
        statement_timeout: Seconds the server lets one statement run.
        connect_timeout: Seconds to wait for a connection.
        time_shift: Tests only: seconds added to the server's clock, read
            before each call (to follow a mock clock).

    Raises:
        StoreError: The database cannot be reached (the message names the
            host and database, never the password), or its schema is
            newer or not ours.
    """
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise StoreError(
            "a postgresql:// state needs the postgres extra: "
            "pip install 'trio-tinkex-recovery[postgres]'"
        ) from None
    if not lease > 0:
        raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
    location, secret = describe_dsn(dsn)
    timeout_ms = max(1, round(statement_timeout * 1000))

    def configure(db: psycopg.Connection[Any]) -> None:
        db.execute(f"SET search_path = {SCHEMA}")
        db.execute(f"SET statement_timeout = {timeout_ms}")
        db.execute(f"SET idle_in_transaction_session_timeout = {2 * timeout_ms}")

    def open_() -> PostgresStore:
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in dsn:
            kwargs["connect_timeout"] = max(1, round(connect_timeout))
        try:
            with psycopg.connect(dsn, **kwargs) as db:
                db.execute(f"SET statement_timeout = {timeout_ms}")
                _migrate(db, location, readonly)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open database {location}: {_clean(exc, secret)}"
            ) from None
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            configure=configure,
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=connect_timeout,
            reconnect_timeout=max(connect_timeout, 60.0),
            name="trio-tinkex-recovery",
        )
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise StoreError(
                f"cannot open database {location}: {_clean(exc, secret)}"
            ) from None
        return PostgresStore(
            location,
            pool,
            lease=lease,
            readonly=readonly,
            secret=secret,
            time_shift=time_shift,
        )

    return await trio.to_thread.run_sync(open_)
