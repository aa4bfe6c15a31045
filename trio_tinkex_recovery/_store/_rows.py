"""The journal's rows: one copy for SQLite and PostgreSQL.

Both databases keep the same tables (``runs``, ``recoveries``, ``loads``,
``history``; PostgreSQL adds lease columns and replicas), so the mapping
between a record and its row, and the statements both run alike, live
here once.  The statements use ``?`` placeholders (SQLite's); a
PostgreSQL caller hands in an `Execute` that turns them into ``%s``.
Everything here runs inside the caller's transaction, in its worker thread.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from .._state import RecoveryState
from ._base import (
    HistoryEntry,
    LoadRecord,
    SessionRecord,
    Snapshot,
    StoredRecovery,
    StoredRun,
    history_entry,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "LOAD_COLUMNS",
    "RECOVERY_COLUMNS",
    "RUN_COLUMNS",
    "SESSION_COLUMNS",
    "Cursor",
    "Execute",
    "read_history",
    "run_row",
    "snapshot",
    "tables_v1",
    "write_load",
    "write_recovery",
]

#: The columns a `StoredRun` is read from, in order.
RUN_COLUMNS: Final = "run_id, metadata, recovered, successor"
#: The columns of ``recoveries``, in order.
RECOVERY_COLUMNS: Final = (
    "run_id, phase, attempt, checkpoint, retry_at_wall, new_run_id, error, metadata"
)
#: The columns a `SessionRecord` is read from, in order.
SESSION_COLUMNS: Final = "key, session_id, next_seq"
#: The columns a `LoadRecord` is read from: its fields, in order (in the
#: table, ``created`` follows).
LOAD_COLUMNS: Final = ", ".join(field.name for field in attrs.fields(LoadRecord))
#: Recovery phases that are still to be acted on.
PENDING_PHASES: Final = "('queued', 'attempting', 'waiting')"


def tables_v1(*, real: str, json: str, flag: str, serial: str) -> str:
    """The ``meta``, ``recoveries``, ``loads`` and ``history`` tables of schema 1.

    Both stores create them alike, in their own database's types: ``real``
    for a float, ``json`` for the metadata, ``flag`` for a boolean and
    ``serial`` for an auto-numbered key.  A migration never changes: a
    later schema adds a migration of its own.
    """
    return f"""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE recoveries (
        run_id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        checkpoint TEXT,
        retry_at_wall {real},
        new_run_id TEXT,
        error TEXT,
        metadata {json} NOT NULL
    );
    CREATE TABLE loads (
        key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        model_seq_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        optimizer {flag} NOT NULL,
        request_id TEXT,
        outcome TEXT,
        created {real} NOT NULL
    );
    CREATE TABLE history (
        id {serial},
        run_id TEXT NOT NULL,
        at {real} NOT NULL,
        phase TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        detail TEXT
    );
    """


class Cursor(Protocol):
    """What a statement returns (sqlite3's and psycopg's cursors alike)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Execute(Protocol):
    """Run one statement with ``?`` placeholders in the caller's transaction."""

    def __call__(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


def metadata(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """A metadata column: JSON text (SQLite) or already decoded (JSONB)."""
    return json.loads(value) if isinstance(value, str) else dict(value)


def run_row(run: StoredRun) -> tuple[Any, ...]:
    """The ``runs`` values of ``run``, in `RUN_COLUMNS` order."""
    return (run.run_id, json.dumps(dict(run.metadata)), run.recovered, run.successor)


def stored_run(row: Sequence[Any]) -> StoredRun:
    """A `StoredRun` from a row in `RUN_COLUMNS` order."""
    run_id, meta, recovered, successor = row
    return StoredRun(
        run_id=run_id,
        metadata=metadata(meta),
        recovered=bool(recovered),
        successor=successor,
    )


def stored_recovery(row: Sequence[Any]) -> StoredRecovery:
    """A `StoredRecovery` from a row in `RECOVERY_COLUMNS` order."""
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
        metadata=metadata(meta),
    )


def load_record(row: Sequence[Any]) -> LoadRecord:
    """A `LoadRecord` from a row in `LOAD_COLUMNS` order."""
    fields = dict(zip(LOAD_COLUMNS.split(", "), row, strict=True))
    fields["optimizer"] = bool(fields["optimizer"])  # SQLite keeps an integer
    return LoadRecord(**fields)


def snapshot(
    runs: Iterable[Sequence[Any]],
    recoveries: Iterable[Sequence[Any]],
    session: Sequence[Any] | None,
    loads: Iterable[Sequence[Any]],
) -> Snapshot:
    """A `Snapshot` from the rows a store read (in the column orders above)."""
    return Snapshot(
        runs={run.run_id: run for run in map(stored_run, runs)},
        recoveries={row[0]: stored_recovery(row) for row in recoveries},
        session=SessionRecord(*session) if session is not None else None,
        open_loads=tuple(map(load_record, loads)),
    )


def write_recovery(execute: Execute, recovery: StoredRecovery, now: float) -> None:
    """Record a recovery's new state, mark a ``done`` run restored, add history."""
    state = recovery.state
    row = execute(
        f"SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE run_id = ?",
        (state.run_id,),
    ).fetchone()
    previous = stored_recovery(row) if row is not None else None
    execute(
        f"INSERT INTO recoveries ({RECOVERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id) DO UPDATE SET phase = excluded.phase, "
        "attempt = excluded.attempt, checkpoint = excluded.checkpoint, "
        "retry_at_wall = excluded.retry_at_wall, new_run_id = excluded.new_run_id, "
        "error = excluded.error, metadata = excluded.metadata",
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
        # In the same transaction: the run is restored in its episode, so
        # neither a restart nor a replica taking it over restores it again.
        execute(
            "UPDATE runs SET recovered = ?, successor = ? WHERE run_id = ?",
            (True, state.new_run_id, state.run_id),
        )
    entry = history_entry(previous, recovery, now)
    if entry is not None:
        execute(
            "INSERT INTO history (run_id, at, phase, attempt, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            (entry.run_id, entry.at, entry.phase, entry.attempt, entry.detail),
        )


def write_load(execute: Execute, load: LoadRecord, now: float) -> None:
    """Record a ``load_weights`` (its request id and outcome as they settle)."""
    execute(
        f"INSERT INTO loads ({LOAD_COLUMNS}, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET request_id = excluded.request_id, "
        "outcome = excluded.outcome",
        (*attrs.astuple(load, recurse=False), now),  # LOAD_COLUMNS, created
    )


def read_history(execute: Execute, run_id: str | None) -> list[HistoryEntry]:
    """The recovery history, oldest first, of one run or all."""
    rows = execute(
        "SELECT run_id, at, phase, attempt, detail FROM history "
        "WHERE CAST(? AS TEXT) IS NULL OR run_id = ? ORDER BY id",
        (run_id, run_id),
    ).fetchall()
    return [HistoryEntry(*row) for row in rows]
