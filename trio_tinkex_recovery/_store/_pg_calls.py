"""How the PostgreSQL store talks to its server.

psycopg 3's async API needs asyncio, so the store uses its synchronous
`psycopg_pool.ConnectionPool` from worker threads (`trio.to_thread`),
behind a `trio.CapacityLimiter` as wide as the pool.  Every call is one
transaction.  A call whose Trio task is cancelled is abandoned and its
statement cancelled on the server.  Messages name the database, never its
password.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._base import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg
    import psycopg_pool

__all__ = ["clean", "describe_dsn", "in_transaction", "one"]

T = TypeVar("T")


class Abandoned(Exception):
    """The call was cancelled before its worker thread began it."""


class InFlight:
    """One call's worker thread: its connection, so that it can be cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.abandoned = False

    def begin(self, conn: psycopg.Connection[Any]) -> None:
        """Called by the worker: raise `Abandoned` if its caller gave up."""
        with self.lock:
            if self.abandoned:
                raise Abandoned
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


async def in_transaction(
    pool: psycopg_pool.ConnectionPool[Any],
    limiter: trio.CapacityLimiter,
    fn: Callable[[psycopg.Connection[Any], float], T],
    *,
    shift: float,
    what: str,
    secret: str | None,
) -> T:
    """Run ``fn(connection, shift)`` in one transaction, in a worker thread.

    Cancelled, the thread is abandoned and its statement cancelled on the
    server.

    Raises:
        StoreError: The database failed; the message starts ``cannot
            {what}`` and names no password.
    """
    import psycopg

    flight = InFlight()

    def call() -> T:
        try:
            with pool.connection() as db:
                flight.begin(db)
                try:
                    with db.transaction():
                        return fn(db, shift)
                finally:
                    flight.end()
        except psycopg.Error as exc:
            raise StoreError(f"cannot {what}: {clean(exc, secret)}") from None

    try:
        return await trio.to_thread.run_sync(
            call, limiter=limiter, abandon_on_cancel=True
        )
    except trio.Cancelled:
        # A write that has not begun never will (a renewal must not land
        # after the release that followed it).
        flight.abandon()
        raise


def _ignore(result: object) -> None:
    """Discard what a fire-and-forget thread returned."""


def clean(exc: BaseException, secret: str | None) -> str:
    """One line about ``exc``, without the password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text


def one(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The one row a statement returns."""
    row = cursor.fetchone()
    assert row is not None
    return tuple(row)


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
