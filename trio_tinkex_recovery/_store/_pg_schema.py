"""The PostgreSQL journal's schema: its tables, versions and migrations.

The tables live in their own schema, ``trio_tinkex_recovery``, versioned
(``meta.schema_version``) with forward-only migrations like the SQLite
file.  Beside the journal's tables each run has its lease columns
(``owner``, ``lease_until``, ``token``) and the live replicas have a table
of their own.  A schema written by a newer version, or one that is not
ours, is refused and left untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._base import StoreError
from ._rows import tables_v1

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SCHEMA", "SCHEMA_VERSION", "migrate"]

#: The schema the tables live in.
SCHEMA: Final = "trio_tinkex_recovery"
#: The schema version this version writes; it migrates every older one.
SCHEMA_VERSION: Final = 1
# Any two processes migrating at once take this lock (a hash of the schema).
MIGRATION_LOCK: Final = 0x7474_726B

#: Forward-only migrations: ``MIGRATIONS[n]`` takes a schema from n to n + 1.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
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
    CREATE TABLE sessions (
        replica TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        session_id TEXT,
        next_seq INTEGER NOT NULL
    );
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        last_seen TIMESTAMPTZ NOT NULL,
        lease DOUBLE PRECISION NOT NULL
    );
    """
    + tables_v1(
        real="DOUBLE PRECISION",
        json="JSONB",
        flag="BOOLEAN",
        serial="BIGSERIAL PRIMARY KEY",
    ),
)


def migrate(db: psycopg.Connection[Any], location: str, readonly: bool) -> None:
    """Create or migrate the schema; refuse one that is newer or not ours."""
    with db.transaction():
        if not readonly:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
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
            db.execute(MIGRATIONS[step].encode())
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                "DO UPDATE SET value = EXCLUDED.value",
                (str(step + 1),),
            )
