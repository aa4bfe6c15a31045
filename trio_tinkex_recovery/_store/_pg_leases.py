"""The leases of replicas sharing a PostgreSQL journal, in SQL.

PostgreSQL's transactions are the only source of truth and its clock
(``now()``) the only clock:

- each run has an ``owner`` (a replica id), a ``lease_until`` and a fencing
  ``token`` that grows on every claim;
- `renew` records that a replica is alive (table ``replicas``) and extends
  the leases it still holds; `claim` takes free or expired runs (``FOR
  UPDATE SKIP LOCKED``); `give_back` and `release` let go;
- `fence` guards every journal write about a run: it locks the run's row
  and checks (owner, token, unexpired lease) in the writer's transaction,
  and raises `LeaseLostError` otherwise.

Each function runs inside the caller's transaction, in its worker thread;
``shift`` moves the server's clock (tests only, to follow a mock clock).
The lease keeper of the engine decides when to call what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._base import Claim, LeaseLostError, Owner, Renewal
from ._pg_calls import one

if TYPE_CHECKING:
    from collections.abc import Collection

    import psycopg

__all__ = ["LEASE", "NOW", "claim", "fence", "give_back", "owners", "release", "renew"]

#: The server's clock, moved by ``%(shift)s`` seconds.
NOW: Final = "(now() + %(shift)s * interval '1 second')"
#: A lease's length, ``%(lease)s`` seconds.
LEASE: Final = "%(lease)s * interval '1 second'"


def renew(
    db: psycopg.Connection[Any], replica: str, lease: float, shift: float
) -> Renewal:
    """Say ``replica`` is alive and extend every lease it still holds.

    A lease that expired already is not renewed (the run may be claimed
    again, with a new token).  Replicas gone for ten leases are forgotten.
    """
    p = {"me": replica, "lease": lease, "shift": shift}
    db.execute(
        f"INSERT INTO replicas VALUES (%(me)s, {NOW}, %(lease)s) "
        "ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen, "
        "lease = EXCLUDED.lease",
        p,
    )
    held = db.execute(
        f"UPDATE runs SET lease_until = {NOW} + {LEASE} "
        f"WHERE owner = %(me)s AND lease_until > {NOW} "
        "RETURNING run_id, token",
        p,
    ).fetchall()
    db.execute(
        f"DELETE FROM replicas WHERE last_seen + 10 * lease * interval "
        f"'1 second' < {NOW}",
        p,
    )
    (replicas,) = one(
        db.execute(
            "SELECT count(*) FROM replicas WHERE last_seen + lease * "
            f"interval '1 second' > {NOW}",
            p,
        )
    )
    (runs,) = one(db.execute("SELECT count(*) FROM runs"))
    return Renewal(held=dict(held), replicas=max(replicas, 1), runs=runs)


def claim(
    db: psycopg.Connection[Any],
    replica: str,
    lease: float,
    shift: float,
    *,
    limit: int,
    exclude: Collection[str],
) -> list[Claim]:
    """Take every orphaned run, and free runs up to ``limit``, for ``replica``.

    Orphans are runs whose lease expired, or left free for a third of a
    lease.  Runs in ``exclude`` are left alone.
    """
    p = {
        "me": replica,
        "lease": lease,
        "limit": max(0, limit),
        "exclude": list(exclude),
        "shift": shift,
    }
    take = (
        "UPDATE runs SET owner = %(me)s, "
        f"lease_until = {NOW} + {LEASE}, token = runs.token + 1 "
        "FROM free WHERE runs.run_id = free.run_id "
        "RETURNING runs.run_id, runs.token, free.owner"
    )
    rows = db.execute(
        "WITH free AS (SELECT run_id, owner FROM runs "
        f"WHERE ((owner IS NOT NULL AND lease_until <= {NOW}) "
        f"OR (owner IS NULL AND lease_until <= {NOW} - {LEASE} / 3)) "
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


def give_back(
    db: psycopg.Connection[Any], replica: str, shift: float, run_ids: Collection[str]
) -> None:
    """Free the runs ``run_ids`` that ``replica`` holds."""
    db.execute(
        f"UPDATE runs SET owner = NULL, lease_until = {NOW} "
        "WHERE owner = %(me)s AND run_id = ANY(%(ids)s)",
        {"me": replica, "ids": list(run_ids), "shift": shift},
    )


def release(db: psycopg.Connection[Any], replica: str, shift: float) -> None:
    """Free every run ``replica`` holds, and strike it from the replicas."""
    db.execute(
        f"UPDATE runs SET owner = NULL, lease_until = {NOW} WHERE owner = %(me)s",
        {"me": replica, "shift": shift},
    )
    db.execute("DELETE FROM replicas WHERE id = %s", (replica,))


def owners(db: psycopg.Connection[Any], shift: float) -> dict[str, Owner]:
    """Who holds each run, with the seconds left on its lease."""
    rows = db.execute(
        "SELECT run_id, owner, "
        f"EXTRACT(EPOCH FROM lease_until - {NOW})::float8 "
        "FROM runs WHERE owner IS NOT NULL",
        {"shift": shift},
    ).fetchall()
    return {run: Owner(owner, left) for run, owner, left in rows}


def fence(
    db: psycopg.Connection[Any],
    *,
    run_id: str,
    replica: str,
    token: int,
    shift: float,
    location: str,
) -> None:
    """Lock the run's row; raise `LeaseLostError` unless ``replica``'s lease holds."""
    row = db.execute(
        "SELECT owner, token FROM runs WHERE run_id = %(run)s "
        f"AND lease_until > {NOW} FOR SHARE",
        {"run": run_id, "shift": shift},
    ).fetchone()
    if row is None or tuple(row) != (replica, token):
        raise LeaseLostError(
            f"run {run_id}: the lease of replica {replica} in {location} was lost"
            + (f" to replica {row[0]}" if row is not None and row[0] else "")
        )
