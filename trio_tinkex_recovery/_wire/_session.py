"""The service client's session: created on first use, kept alive, finished.

As the official ``tinker`` SDK 0.38.0 does it
(``tinker/lib/internal_client_holder.py``)::

    POST /api/v1/client/config    {"sdk_version"}       once per service client
    POST /api/v1/create_session   {...}                 once per service client
    POST /api/v1/session_heartbeat                      every 10 s
    POST /api/v1/sessions/{id}/finish                   when the client closes

Creating the session reuses one idempotency key however many times it is
tried, so a retry after a lost answer gets the session already created.
With a journal (`SessionKeeper.from_ledger`) the key and the session are
written ahead, so a watcher started again keeps the session it made while
the service says it is alive.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

from .. import _test_mode
from .._errors import APIStatusError, TinkexRecoveryError
from .._store import SessionRecord
from ._http import new_idempotency_key
from ._operations import GONE, Operation, required_str

if TYPE_CHECKING:
    from .._store import Ledger
    from ._http import HTTPClient

__all__ = [
    "FINISH_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "WIRE_SDK_VERSION",
    "FinishReason",
    "Session",
    "SessionKeeper",
]

logger = logging.getLogger("trio_tinkex_recovery.client")

#: The SDK release whose wire protocol this client speaks; sent where the
#: SDK sends its own version (``client/config``, ``create_session``).
WIRE_SDK_VERSION: Final = "0.38.0"
#: The SDK sends a session heartbeat every 10 s (``internal_client_holder.py``).
HEARTBEAT_INTERVAL: Final = 10.0
#: How long closing may take to tell the service the session is finished.
FINISH_TIMEOUT: Final = 10.0

#: Why a session ends, as sent to ``sessions/{id}/finish``.
FinishReason = Literal["success", "errored", "interrupted"]


@attrs.define
class Session:
    """The service client's session and what is numbered within it."""

    session_id: str
    next_model_seq_id: int = 0
    #: Restores that failed ambiguously, by (path, optimizer).
    pending_loads: dict[tuple[str, bool], Operation] = attrs.field(factory=dict)
    #: Set once the service said the session is over (heartbeat 410).
    expired: bool = False
    #: Stops this session's heartbeat.
    heartbeat_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def take_model_seq_id(self) -> int:
        seq_id = self.next_model_seq_id
        self.next_model_seq_id += 1
        return seq_id


class SessionKeeper:
    """One service client's session: its key, its heartbeat, its end.

    Args:
        http: The service client's HTTP client.
        nursery: Where the heartbeat runs (the service client's).
    """

    def __init__(self, http: HTTPClient, nursery: trio.Nursery) -> None:
        self._http = http
        self._nursery = nursery
        self._lock = trio.Lock()
        #: The session, once one was created (it may since have expired).
        self.current: Session | None = None
        #: The key creating the session is sent with, however many times.
        self.key = new_idempotency_key()
        #: Set when the service client closes.
        self.closed = False

    @property
    def session_id(self) -> str | None:
        """The session's id, once one was created."""
        return self.current.session_id if self.current else None

    def check_open(self) -> None:
        """Raise `trio.ClosedResourceError` once the service client closed."""
        if self.closed:
            raise trio.ClosedResourceError("this ServiceClient is closed")

    async def ensure(self) -> Session:
        """The live session, created (again, if the service ended it) if need be."""
        async with self._lock:
            self.check_open()
            if self.current is not None and not self.current.expired:
                return self.current
            if self.current is None:
                await self._fetch_client_config()
            else:  # the service ended the old session; start another
                self.key = new_idempotency_key()
            return await self._create()

    async def from_ledger(self, ledger: Ledger) -> Session:
        """The session to restore in: this client's, the journal's, or a new one."""
        async with self._lock:
            self.check_open()
            stored = ledger.session()
            if self.current is not None and not self.current.expired:
                return self.current
            if (
                stored is not None
                and stored.session_id is not None
                and self.current is None
                and await self.alive(stored.session_id)
            ):
                # Made by a watcher before a restart: still alive, keep it.
                self.key = stored.key
                self.current = Session(stored.session_id)
                self._start_heartbeat(self.current)
                return self.current
            if stored is not None and stored.session_id is None:
                # Its creation may have been sent: ask again with the same key.
                self.key = stored.key
            elif self.current is not None or stored is not None:
                self.key = new_idempotency_key()
            await ledger.put_session(SessionRecord(key=self.key))
            if self.current is None:
                await self._fetch_client_config()
            session = await self._create()
            await ledger.put_session(
                SessionRecord(key=self.key, session_id=session.session_id)
            )
            return session

    async def alive(self, session_id: str) -> bool:
        """Whether the service still knows ``session_id`` (one heartbeat)."""
        try:
            await self._http.request(
                "POST",
                "/api/v1/session_heartbeat",
                json={"session_id": session_id, "type": "session_heartbeat"},
                parse=False,
            )
        except APIStatusError as exc:
            if exc.status in GONE:
                return False
            raise
        return True

    def close(self) -> None:
        """Mark the service client closed and stop the heartbeat."""
        self.closed = True
        if self.current is not None:
            self.current.heartbeat_scope.cancel()

    async def finish(self, reason: FinishReason) -> None:
        """Tell the service the session (if any, and alive) is finished.

        A failure is logged, not raised.
        """
        session = self.current
        if session is None or session.expired:
            return
        try:
            await self._http.request(
                "POST",
                f"/api/v1/sessions/{session.session_id}/finish",
                json={"reason": {"type": reason}},
                max_retries=1,
                parse=False,
            )
        except TinkexRecoveryError as exc:
            logger.info("could not finish session %s: %s", session.session_id, exc)

    async def _create(self) -> Session:
        """``create_session`` with this client's session key; start its heartbeat."""
        body = await self._http.request_object(
            "POST",
            "/api/v1/create_session",
            json={
                "tags": [],
                "user_metadata": {},
                "sdk_version": WIRE_SDK_VERSION,
                "type": "create_session",
            },
            idempotency_key=self.key,
        )
        session = Session(
            required_str(body, "session_id", "POST /api/v1/create_session")
        )
        self.current = session
        logger.debug("created session %s", session.session_id)
        self._start_heartbeat(session)
        return session

    def _start_heartbeat(self, session: Session) -> None:
        interval = _test_mode.heartbeat_interval(HEARTBEAT_INTERVAL)
        if interval is not None:
            self._nursery.start_soon(self._heartbeat, session, interval)

    async def _fetch_client_config(self) -> None:
        """``POST /api/v1/client/config``, as the SDK's first request.

        Nothing in the answer is needed here (``{}`` is valid); a service
        that does not know the endpoint (404) is fine too.
        """
        try:
            body = await self._http.request_object(
                "POST", "/api/v1/client/config", json={"sdk_version": WIRE_SDK_VERSION}
            )
        except APIStatusError as exc:
            if exc.status != 404:
                raise
            return
        if body.get("pjwt_auth_enabled") is True:
            logger.warning(
                "the service offers JWT authentication; this client keeps using "
                "the API key"
            )

    async def _heartbeat(self, session: Session, interval: float) -> None:
        """Tell the service the session is alive, every ``interval`` seconds.

        Failures are logged and the loop goes on, except 410 (the session
        is over): the next restore then creates a new session.
        """
        with session.heartbeat_scope:
            next_at = trio.current_time()
            while True:
                next_at += interval
                await trio.sleep_until(next_at)
                try:
                    await self._http.request(
                        "POST",
                        "/api/v1/session_heartbeat",
                        json={
                            "session_id": session.session_id,
                            "type": "session_heartbeat",
                        },
                        max_retries=0,
                        attempt_timeout=interval,
                        parse=False,
                    )
                except TinkexRecoveryError as exc:
                    if isinstance(exc, APIStatusError) and exc.status == 410:
                        logger.warning(
                            "session %s has ended; the next restore starts a new one",
                            session.session_id,
                        )
                        session.expired = True
                        session.pending_loads.clear()
                        return
                    logger.info(
                        "heartbeat of session %s failed: %s", session.session_id, exc
                    )
