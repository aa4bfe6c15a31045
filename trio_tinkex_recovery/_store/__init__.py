"""The journal: what a watcher keeps so that a restart loses nothing.

`open_store` opens one by name: ``None`` or ``":memory:"`` for memory, a
``postgresql://`` DSN for PostgreSQL (shared by replicas), a filesystem
path for SQLite.  See `_base` for what a store keeps and for
`LeasingStore`, the store replicas share.  SQLite and PostgreSQL map
records to rows through one shared layer, `_rows`.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._base import (
    Claim,
    HistoryEntry,
    LeaseLostError,
    LeasingStore,
    LoadRecord,
    Owner,
    Renewal,
    SessionRecord,
    Snapshot,
    Store,
    StoredRecovery,
    StoredRun,
    StoreError,
    json_safe,
)
from ._ledger import Journal, Ledger
from ._memory import MemoryStore
from ._postgres import DEFAULT_LEASE, PostgresStore, is_dsn, open_postgres_store
from ._sqlite import SCHEMA_VERSION, SQLiteStore, open_sqlite_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "DEFAULT_LEASE",
    "SCHEMA_VERSION",
    "Claim",
    "HistoryEntry",
    "Journal",
    "LeaseLostError",
    "LeasingStore",
    "Ledger",
    "LoadRecord",
    "MemoryStore",
    "Owner",
    "PostgresStore",
    "Renewal",
    "SQLiteStore",
    "SessionRecord",
    "Snapshot",
    "Store",
    "StoreError",
    "StoredRecovery",
    "StoredRun",
    "default_state_path",
    "is_dsn",
    "json_safe",
    "open_store",
]


def default_state_path() -> str:
    """Where ``watch`` keeps its journal unless told otherwise.

    ``$XDG_STATE_HOME/trio-tinkex-recovery/state.db``, or
    ``~/.local/state/trio-tinkex-recovery/state.db`` without that variable.
    """
    root = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(root, "trio-tinkex-recovery", "state.db")


@asynccontextmanager
async def open_store(
    location: str | os.PathLike[str] | None,
    *,
    readonly: bool = False,
    lease: float = DEFAULT_LEASE,
) -> AsyncIterator[Store]:
    """Open the journal at ``location`` for the ``async with`` block.

    Args:
        location: ``None`` or ``":memory:"`` for a store in memory; a
            ``postgresql://`` DSN for a database shared by replicas (the
            ``postgres`` extra); anything else is the path of an SQLite
            file, created (with its folder) if missing.
        readonly: Read an existing store beside the watchers that use it
            (``status``): no lock or lease is taken and nothing is written.
        lease: With PostgreSQL, seconds a replica's lease on a run lasts
            (renewed every third of it).

    Raises:
        StoreError: The store cannot be opened: locked by another watcher,
            not a state file, corrupt, newer than this version, unwritable,
            or a database that cannot be reached.
    """
    if location is None or str(location) == ":memory:":
        store: Store = MemoryStore()
    elif is_dsn(str(location)):
        store = await open_postgres_store(str(location), readonly=readonly, lease=lease)
    else:
        store = await open_sqlite_store(str(location), readonly=readonly)
    try:
        yield store
    finally:
        await store.aclose()
