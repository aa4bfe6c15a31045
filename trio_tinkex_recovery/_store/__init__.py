"""The journal: what a watcher keeps so that a restart loses nothing.

`open_store` opens one by name: ``None`` or ``":memory:"`` for memory, a
filesystem path for SQLite.  See `_base` for what a store keeps.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._base import (
    HistoryEntry,
    LeaseLostError,
    LoadRecord,
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
from ._sqlite import SCHEMA_VERSION, SQLiteStore, open_sqlite_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "SCHEMA_VERSION",
    "HistoryEntry",
    "Journal",
    "LeaseLostError",
    "Ledger",
    "LoadRecord",
    "MemoryStore",
    "SQLiteStore",
    "SessionRecord",
    "Snapshot",
    "Store",
    "StoreError",
    "StoredRecovery",
    "StoredRun",
    "default_state_path",
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
    location: str | os.PathLike[str] | None, *, readonly: bool = False
) -> AsyncIterator[Store]:
    """Open the journal at ``location`` for the ``async with`` block.

    Args:
        location: ``None`` or ``":memory:"`` for a store in memory; a
            ``postgresql://`` DSN is not supported yet; anything else is the
            path of an SQLite file, created (with its folder) if missing.
        readonly: Read an existing file beside the watcher that owns it
            (``status``): no lock is taken and nothing is written.

    Raises:
        StoreError: The store cannot be opened: locked by another watcher,
            not a state file, corrupt, newer than this version, unwritable.
    """
    if location is None or str(location) == ":memory:":
        store: Store = MemoryStore()
    else:
        text = str(location)
        if text.startswith(("postgresql://", "postgres://")):
            raise StoreError(
                "a PostgreSQL store is not available in this version; "
                "pass a file path for --state"
            )
        store = await open_sqlite_store(text, readonly=readonly)
    try:
        yield store
    finally:
        await store.aclose()
