"""The SQLite store: the embedded journal, one file, standard library only.

SQLite is used from worker threads (`trio.to_thread`), one statement batch
at a time behind a `trio.CapacityLimiter`; the database runs in WAL mode
with ``synchronous=FULL``, so a write that returned survives a crash or a
power cut.  The schema is versioned (``meta.schema_version``) with
forward-only migrations.  One watcher owns a file at a time: it holds an
exclusive ``flock`` on ``FILE.lock`` (released by the kernel if the
process dies, SIGKILL included); a second watcher is refused with a message
naming the file.  A file that is not ours, corrupt, or written by a newer
version is refused and left untouched.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from .._files import open_private, private_dir, private_file
from . import _rows as rows
from ._base import (
    HistoryEntry,
    LoadRecord,
    SessionRecord,
    Snapshot,
    StoredRecovery,
    StoredRun,
    StoreError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "open_sqlite_store"]

T = TypeVar("T")

#: The schema this version writes; it reads every older one (migrating it).
SCHEMA_VERSION: Final = 1

#: Forward-only migrations: ``_MIGRATIONS[n]`` takes a file from n to n + 1.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        metadata TEXT NOT NULL,
        recovered INTEGER NOT NULL,
        successor TEXT
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        key TEXT NOT NULL,
        session_id TEXT,
        next_seq INTEGER NOT NULL
    );
    """
    + rows.tables_v1(
        real="REAL",
        json="TEXT",
        flag="INTEGER",
        serial="INTEGER PRIMARY KEY AUTOINCREMENT",
    ),
)


class SQLiteStore:
    """A `Store` in one SQLite file; made by `open_store` with a path."""

    def __init__(self, path: str, connection: sqlite3.Connection, lock: int) -> None:
        self.location = path
        self._db = connection
        self._lock_fd = lock
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.location!r}>"

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise trio.ClosedResourceError(f"state file {self.location} is closed")

        def call() -> T:
            try:
                with self._db:  # one transaction: all or nothing
                    return fn(self._db)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot {what} state file {self.location}: {exc}"
                ) from exc

        # Not abandoned on cancel: a write that started completes.
        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    async def load(self) -> Snapshot:
        return await self._run("read", _read_snapshot)

    async def put_run(self, run: StoredRun) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)", rows.run_row(run)
            )

        await self._run("write", write)

    async def remove_runs(self, run_ids: Collection[str]) -> None:
        ids = [(r,) for r in run_ids]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM runs WHERE run_id = ?", ids)
            db.executemany(
                "DELETE FROM recoveries WHERE run_id = ? "
                f"AND phase NOT IN {rows.PENDING_PHASES}",
                ids,
            )

        await self._run("write", write)

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        now = time.time()
        await self._run(
            "write", lambda db: rows.write_recovery(db.execute, recovery, now)
        )

    async def put_session(self, session: SessionRecord) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (1, ?, ?, ?)",
                (session.key, session.session_id, session.next_seq),
            )

        await self._run("write", write)

    async def put_load(self, load: LoadRecord) -> None:
        now = time.time()
        await self._run("write", lambda db: rows.write_load(db.execute, load, now))

    async def history(self, run_id: str | None = None) -> list[HistoryEntry]:
        return await self._run("read", lambda db: rows.read_history(db.execute, run_id))

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        async with self._limiter:
            await trio.to_thread.run_sync(self._db.close)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)


def _read_snapshot(db: sqlite3.Connection) -> Snapshot:
    return rows.snapshot(
        db.execute(f"SELECT {rows.RUN_COLUMNS} FROM runs").fetchall(),
        db.execute(f"SELECT {rows.RECOVERY_COLUMNS} FROM recoveries").fetchall(),
        db.execute(f"SELECT {rows.SESSION_COLUMNS} FROM sessions").fetchone(),
        db.execute(
            f"SELECT {rows.LOAD_COLUMNS} FROM loads "
            "WHERE outcome IS NULL ORDER BY created"
        ).fetchall(),
    )


def _take_lock(path: str) -> int:
    lock_path = f"{path}.lock"
    try:
        fd = open_private(lock_path)
    except OSError as exc:
        raise StoreError(
            f"cannot open state file {path}: cannot create its lock file "
            f"({exc.strerror})"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StoreError(
            f"state file {path} is in use by another watcher{who}; "
            "stop it first, or pass another --state"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _connect(path: str) -> sqlite3.Connection:
    """Open (creating or migrating) the file; refuse one that is not ours."""
    exists = os.path.exists(path)
    if exists and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"cannot open state file {path}: permission denied")
    try:
        private_file(path)  # SQLite gives its -wal and -shm files this mode
    except OSError as exc:
        raise StoreError(f"cannot create state file {path}: {exc.strerror}") from exc
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state file {path}: {exc}") from exc
    try:
        db.isolation_level = "DEFERRED"
        version = _schema_version(db, path, exists)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state file {path} was written by a newer version of "
                f"trio-tinkex-recovery (schema {version}; this version reads up "
                f"to {SCHEMA_VERSION}); upgrade, or pass another --state"
            )
        # WAL: readers (``status``) never block the watcher; FULL: a
        # committed write survives a power cut.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        for step in range(version, SCHEMA_VERSION):
            with db:
                db.executescript(f"BEGIN; {_MIGRATIONS[step]} COMMIT;")
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(step + 1),),
                )
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"cannot open state file {path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def _connect_readonly(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise StoreError(f"state file {path} does not exist")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state file {path}: {exc}") from exc
    try:
        version = _schema_version(db, path, exists=True)
    except BaseException:
        db.close()
        raise
    if version != SCHEMA_VERSION:
        db.close()
        raise StoreError(
            f"state file {path} has schema {version}; this version reads "
            f"schema {SCHEMA_VERSION} (run watch with it once to migrate)"
        )
    return db


def _schema_version(db: sqlite3.Connection, path: str, exists: bool) -> int:
    try:
        tables = {
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            )
        }
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"state file {path} is not a trio-tinkex-recovery state file "
            f"(or it is corrupt: {exc}); it was left untouched"
        ) from exc
    if not tables:
        return 0
    if "meta" not in tables:
        raise StoreError(
            f"state file {path} is an SQLite database of something else "
            "(no schema version); it was left untouched"
        )
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreError(
            f"state file {path} has no valid schema version; it was left untouched"
        ) from None


async def open_sqlite_store(path: str, *, readonly: bool = False) -> SQLiteStore:
    """Open the SQLite store at ``path`` (created if missing, with its folder).

    With ``readonly`` (for ``status``), the file must exist; it is read
    without its lock, beside a watcher that may be writing it, and never
    written.

    Raises:
        StoreError: The file is locked by another watcher, not a state file,
            corrupt, written by a newer version, or cannot be created.
    """

    def open_() -> SQLiteStore:
        nonlocal path
        path = os.path.abspath(os.path.expanduser(path))
        if readonly:
            return SQLiteStore(path, _connect_readonly(path), -1)
        try:
            private_dir(os.path.dirname(path))
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder of state file {path}: {exc.strerror}"
            ) from exc
        lock = _take_lock(path)
        try:
            return SQLiteStore(path, _connect(path), lock)
        except BaseException:
            os.close(lock)
            raise

    return await trio.to_thread.run_sync(open_)
