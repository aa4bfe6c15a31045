"""The simulator's sessions and futures, and the ids they are known by.

`Sessions` and `Futures` are what `TinkerState` keeps besides the runs:
sessions (opened, heartbeaten, finished) and the futures of asynchronous
operations.  Both take their ids from one `Ids` counter, so ids read
``session-000001``, ``req-000002``, ... in the order things happened.
"""

from __future__ import annotations

from typing import Any

import trio

from ._model import PendingFuture, Refused, StoredSession
from ._records import SessionInfo

__all__ = ["Futures", "Ids", "Sessions"]


class Ids:
    """Numbers ids, one counter for every kind: ``{prefix}-{n:06d}``."""

    def __init__(self) -> None:
        self._counter = 0

    def next(self, prefix: str) -> str:
        """A new id starting with ``prefix``."""
        self._counter += 1
        return f"{prefix}-{self._counter:06d}"


class Sessions:
    """The sessions, by id."""

    def __init__(self, ids: Ids) -> None:
        self._ids = ids
        self._sessions: dict[str, StoredSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> StoredSession | None:
        """A session, finished or not, or ``None``."""
        return self._sessions.get(session_id)

    def create(self, **fields: Any) -> str:
        """Open a session with these `StoredSession` fields; its id."""
        session_id = self._ids.next("session")
        self._sessions[session_id] = StoredSession(session_id=session_id, **fields)
        return session_id

    def known(self, session_id: str) -> StoredSession:
        """A session, finished or not.

        Raises:
            Refused: No such session.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} not found")
        return session

    def live(self, session_id: str) -> StoredSession:
        """A session that has not finished.

        Raises:
            Refused: No such session, or it has finished.
        """
        session = self.known(session_id)
        if session.finished is not None:
            raise Refused("gone", f"session {session_id!r} has finished")
        return session

    def finish(self, session_id: str, reason: str | None) -> None:
        """Finish a session; the first reason given wins.

        Raises:
            Refused: No such session.
        """
        session = self.known(session_id)
        if session.finished is None:
            session.finished = reason or "success"

    def snapshot(self) -> dict[str, SessionInfo]:
        """A snapshot of every session, by id."""
        return {
            sid: SessionInfo(
                session_id=sid,
                tags=s.tags,
                user_metadata=dict(s.user_metadata),
                heartbeats=s.heartbeats,
                finished=s.finished,
                model_ids=tuple(
                    load.model_id for load in s.loads.values() if load.restored
                ),
            )
            for sid, s in self._sessions.items()
        }


class Futures:
    """The futures of asynchronous operations, by request id."""

    def __init__(self, ids: Ids) -> None:
        self._ids = ids
        self._futures: dict[str, PendingFuture] = {}

    def find(self, request_id: str) -> PendingFuture | None:
        """A future by its request id, or ``None``."""
        return self._futures.get(request_id)

    def new(self, result: dict[str, Any], *, try_again: int, delay: float) -> str:
        """A future answering ``result`` after ``try_again`` polls and ``delay`` s."""
        request_id = self._ids.next("req")
        self._futures[request_id] = PendingFuture(
            request_id=request_id,
            result=result,
            try_again_left=try_again,
            ready_at=trio.current_time() + delay,
        )
        return request_id
