"""The PostgreSQL store: one journal shared by several replicas, with leases.

One store is one replica: it has an id, holds leases on runs, and fences
every journal write about a run by its lease, raising `LeaseLostError`
when another replica took it.  Adding a run nobody holds is not fenced:
some replica claims it at its next renewal.  The server ends a statement
that runs longer than ``statement_timeout``.

Where the rest lives: the tables and their migrations in `_pg_schema`, the
lease statements in `_pg_leases`, the worker threads and cancellation in
`_pg_calls`, the rows shared with SQLite in `_rows`.  The lease keeper of
the engine decides when to renew, claim and give back; this module only
keeps the database consistent.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from . import _pg_leases as leases
from . import _rows as rows
from ._base import (
    Claim,
    HistoryEntry,
    LeaseLostError,
    LoadRecord,
    Owner,
    Renewal,
    SessionRecord,
    Snapshot,
    StoredRecovery,
    StoredRun,
    StoreError,
)
from ._pg_calls import clean, describe_dsn, in_transaction
from ._pg_leases import NOW
from ._pg_schema import SCHEMA, SCHEMA_VERSION, migrate

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    import psycopg
    import psycopg_pool

    from ._base import LeasingStore

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
#: Connections per store (and worker threads at once).
POOL_SIZE: Final = 4


def is_dsn(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL database rather than a file."""
    return location.startswith(("postgresql://", "postgres://"))


class PostgresStore:
    """A `Store` in a PostgreSQL database; made by `open_store` with a DSN.

    One store is one replica: it has an id, holds leases on runs, and
    fences every write about a run by its lease.  It is a `LeasingStore`.
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
        keys = ("run_id", "metadata", "recovered", "successor")
        values = dict(zip(keys, rows.run_row(run), strict=True))

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            if token is None:
                # A run nobody holds here: added for whichever replica claims
                # it; a run some replica holds is theirs to change.
                db.execute(
                    "INSERT INTO runs (run_id, metadata, recovered, successor, "
                    "lease_until) VALUES (%(run_id)s, %(metadata)s, %(recovered)s, "
                    f"%(successor)s, {NOW}) ON CONFLICT (run_id) DO NOTHING",
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
                "DELETE FROM recoveries WHERE run_id = ANY(%(ids)s) "
                f"AND phase NOT IN {rows.PENDING_PHASES}",
                {"ids": ids},
            )

        await self._run("write", write)

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        run_id = recovery.state.run_id
        token = self._token(run_id)
        now = time.time()

        def write(db: psycopg.Connection[Any], shift: float) -> None:
            self._fence(db, run_id, token, shift)
            rows.write_recovery(_execute(db), recovery, now)

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
            rows.write_load(_execute(db), load, now)

        await self._run("write", write)

    async def history(self, run_id: str | None = None) -> list[HistoryEntry]:
        return await self._run(
            "read", lambda db, _: rows.read_history(_execute(db), run_id)
        )

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
        me, lease = self.replica_id, self.lease
        renewal = await self._run(
            "renew leases in", lambda db, shift: leases.renew(db, me, lease, shift)
        )
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
        me, lease = self.replica_id, self.lease

        def write(db: psycopg.Connection[Any], shift: float) -> list[Claim]:
            return leases.claim(db, me, lease, shift, limit=limit, exclude=exclude)

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
        me = self.replica_id
        await self._run(
            "give back runs in",
            lambda db, shift: leases.give_back(db, me, shift, list(tokens)),
        )

    async def release(self) -> None:
        """Give back every lease and leave the replicas (a clean shutdown)."""
        self._held.clear()
        me = self.replica_id
        await self._run(
            "release leases in", lambda db, shift: leases.release(db, me, shift)
        )

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
        return await self._run("read", leases.owners)

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
        leases.fence(
            db,
            run_id=run_id,
            replica=self.replica_id,
            token=token,
            shift=shift,
            location=self.location,
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
        if self._closed:
            raise trio.ClosedResourceError(f"database {self.location} is closed")
        return await in_transaction(
            self._pool,
            self._limiter,
            fn,
            shift=self._shift(),
            what=f"{what} database {self.location}",
            secret=self._secret,
        )


if TYPE_CHECKING:

    def _leasing(store: PostgresStore) -> LeasingStore:
        return store  # mypy checks that a PostgresStore is a LeasingStore


def _replica_id() -> str:
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _execute(db: psycopg.Connection[Any]) -> rows.Execute:
    """The shared rows' `Execute` on ``db``: ``?`` placeholders become ``%s``."""

    def execute(sql: str, params: Sequence[Any] = (), /) -> rows.Cursor:
        return db.execute(sql.replace("?", "%s"), params)

    return execute


def _read_snapshot(
    db: psycopg.Connection[Any], replica: str, ids: list[str] | None = None
) -> Snapshot:
    where = "" if ids is None else " WHERE run_id = ANY(%(ids)s)"
    params = {"ids": ids}
    return rows.snapshot(
        db.execute(f"SELECT {rows.RUN_COLUMNS} FROM runs{where}", params).fetchall(),
        db.execute(
            f"SELECT {rows.RECOVERY_COLUMNS} FROM recoveries{where}", params
        ).fetchall(),
        db.execute(
            f"SELECT {rows.SESSION_COLUMNS} FROM sessions WHERE replica = %s",
            (replica,),
        ).fetchone(),
        db.execute(
            f"SELECT {rows.LOAD_COLUMNS} FROM loads WHERE outcome IS NULL"
            + ("" if ids is None else " AND run_id = ANY(%(ids)s)")
            + " ORDER BY created",
            params,
        ).fetchall(),
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
                migrate(db, location, readonly)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open database {location}: {clean(exc, secret)}"
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
                f"cannot open database {location}: {clean(exc, secret)}"
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
