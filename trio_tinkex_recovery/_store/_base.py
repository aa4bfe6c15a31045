"""The journal's records and the `Store` protocol every backend implements.

A store keeps what a restarted watcher needs so that it loses nothing and
restores nothing twice:

- the watched runs (`StoredRun`): id, the JSON-serialisable part of their
  metadata, and whether the run was already restored in its current
  corruption episode (and as which run);
- each run's recovery (`StoredRecovery`): the executor's `RecoveryState`
  with its retry time in wall-clock seconds, so a pending recovery resumes
  at its attempt number after a restart;
- write-ahead records of every side effect, written *before* it is sent:
  the session (`SessionRecord`: its idempotency key, then its id, and the
  next model sequence number) and each ``load_weights`` (`LoadRecord`: the
  session, sequence number, path, optimizer flag and idempotency key, then
  the request id once accepted, then the outcome);
- a short history of each run's recoveries, for ``status``.

Nothing is written per healthy poll.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

import attrs

from .._errors import TinkexRecoveryError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from .._state import RecoveryState

__all__ = [
    "Claim",
    "HistoryEntry",
    "LeaseLostError",
    "LeasingStore",
    "LoadOutcome",
    "LoadRecord",
    "Owner",
    "Renewal",
    "SessionRecord",
    "Snapshot",
    "Store",
    "StoreError",
    "StoredRecovery",
    "StoredRun",
    "history_entry",
    "json_safe",
]


class StoreError(TinkexRecoveryError):
    """The journal cannot be opened, read or written.

    The message names the file (or database) and the problem.  A store
    that is corrupt, locked by another watcher or written by a newer
    version is refused, never overwritten.  A failed write is retryable
    (a full disk may clear up); nothing it was meant to precede was sent.
    """

    retryable = True


class LeaseLostError(StoreError):
    """This replica no longer holds the run's lease: another one took it.

    Raised by a fenced write; whatever was about to follow it (a restore)
    must not be sent.  Never retried by this replica.
    """

    retryable = False


@attrs.frozen
class StoredRun:
    """A watched run, as the journal keeps it."""

    #: The run's id.
    run_id: str
    #: Its metadata, JSON-serialisable entries only (live objects such as a
    #: ``training_client`` stay in memory).
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    #: Restored already in its current corruption episode.
    recovered: bool = False
    #: The run that restore created, if known.
    successor: str | None = None


@attrs.frozen
class StoredRecovery:
    """A run's recovery record, with its retry time in wall-clock seconds."""

    #: The executor's record; its ``retry_at`` (Trio time) is not kept.
    state: RecoveryState
    #: When the next attempt may start (``time.time()``), while waiting.
    retry_at_wall: float | None = None
    #: The run's metadata at hand-over (JSON-serialisable entries).
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class SessionRecord:
    """The Tinker session restores are made in (written before it exists)."""

    #: The idempotency key of ``create_session``: the same across restarts.
    key: str
    #: The session's id, once the service answered.
    session_id: str | None = None
    #: The model sequence number the next ``load_weights`` takes.
    next_seq: int = 0


LoadOutcome: TypeAlias = Literal["completed", "failed"]


@attrs.frozen
class LoadRecord:
    """One ``load_weights``, recorded before it is sent."""

    #: Its idempotency key: a resend after a crash uses the same one.
    key: str
    #: The run being recovered, and the attempt this load belongs to.
    run_id: str
    attempt: int
    #: The request's body: session, sequence number, path, optimizer flag.
    session_id: str
    model_seq_id: int
    path: str
    optimizer: bool
    #: The service's request id, once it accepted the load.
    request_id: str | None = None
    #: ``completed`` or ``failed`` once known; ``None`` while in doubt.
    outcome: LoadOutcome | None = None

    @property
    def model_id(self) -> str:
        """The model this load creates: ``{session_id}:train:{model_seq_id}``."""
        return f"{self.session_id}:train:{self.model_seq_id}"


@attrs.frozen
class HistoryEntry:
    """One step of a run's recovery history."""

    #: The run.
    run_id: str
    #: Wall-clock time (``time.time()``).
    at: float
    #: The recovery phase reached: ``queued``, ``attempting``, ``done``...
    phase: str
    #: The attempt number.
    attempt: int
    #: A short detail: the checkpoint, the new run, or the error.
    detail: str | None = None


@attrs.frozen
class Snapshot:
    """Everything a store holds, as read at start."""

    runs: Mapping[str, StoredRun] = attrs.field(factory=dict)
    recoveries: Mapping[str, StoredRecovery] = attrs.field(factory=dict)
    session: SessionRecord | None = None
    #: ``load_weights`` records whose outcome is not known, oldest first.
    open_loads: tuple[LoadRecord, ...] = ()


@runtime_checkable
class Store(Protocol):
    """The journal: where a watcher keeps what must survive a crash.

    Every method writes through before it returns (a crash after it
    returned loses nothing it wrote) and raises `StoreError` when it
    cannot.  Implementations: the in-memory store, SQLite (a file path),
    PostgreSQL (a ``postgresql://`` DSN).
    """

    #: Where the store lives, for messages (a path, never a password).
    location: str

    async def load(self) -> Snapshot:
        """Everything the store holds."""
        ...

    async def put_run(self, run: StoredRun) -> None:
        """Add or replace a watched run."""
        ...

    async def remove_runs(self, run_ids: Collection[str]) -> None:
        """Forget runs (and their finished recoveries)."""
        ...

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        """Record a recovery's new state (and a history entry).

        A recovery that reached ``done`` marks its run, in the same
        transaction, restored in its current episode with its successor:
        a crash right after cannot leave a restored run looking unrestored.
        """
        ...

    async def put_session(self, session: SessionRecord) -> None:
        """Record the session (before ``create_session`` and after)."""
        ...

    async def put_load(self, load: LoadRecord) -> None:
        """Record a ``load_weights`` (before it is sent, and as it settles)."""
        ...

    async def history(self, run_id: str | None = None) -> list[HistoryEntry]:
        """The recovery history, oldest first, of one run or all."""
        ...

    async def aclose(self) -> None:
        """Release the store (its file lock, connections)."""
        ...


@attrs.frozen
class Renewal:
    """What one renewal of a replica's leases found."""

    #: The runs this replica holds now, with their fencing tokens.
    held: Mapping[str, int]
    #: Replicas alive (this one included).
    replicas: int
    #: Runs in the store.
    runs: int


@attrs.frozen
class Claim:
    """A run this replica has just claimed."""

    run_id: str
    #: Its new fencing token.
    token: int
    #: The replica whose lease had expired (a takeover), or ``None``.
    previous: str | None


@attrs.frozen
class Owner:
    """Who holds a run, for ``status``."""

    replica: str
    #: Seconds until the lease expires (negative: expired).
    expires_in: float


@runtime_checkable
class LeasingStore(Store, Protocol):
    """A `Store` shared by replicas, each acting only on the runs it leases.

    What the lease keeper needs of a shared store (PostgreSQL): every run
    has an owner replica, a lease expiry and a fencing token; a write about
    a run this replica does not hold raises `LeaseLostError`.
    """

    #: This replica's id, unique among the replicas of the store.
    replica_id: str
    #: Seconds a lease lasts (renewed every third of it).
    lease: float
    #: Opened to read only (``status``): nothing is claimed or written.
    readonly: bool

    @property
    def held(self) -> Mapping[str, int]:
        """The runs this replica holds, with their fencing tokens."""
        ...

    def holds(self, run_id: str) -> bool:
        """Whether this replica believes it holds ``run_id``'s lease."""
        ...

    async def renew(self) -> Renewal:
        """Say this replica is alive and extend every lease it still holds."""
        ...

    async def claim(self, limit: int, *, exclude: Collection[str] = ()) -> list[Claim]:
        """Take every orphaned run, and free runs up to ``limit``."""
        ...

    async def give_back(self, run_ids: Collection[str]) -> None:
        """Let other replicas claim ``run_ids``."""
        ...

    async def release(self) -> None:
        """Give back every lease and leave the replicas (a clean shutdown)."""
        ...

    def forget(self, run_ids: Collection[str] | None = None) -> None:
        """Stop writing about runs whose leases may have expired (all with ``None``)."""
        ...

    async def runs(self, run_ids: Collection[str]) -> Snapshot:
        """The stored runs ``run_ids``, their recoveries and restores in doubt."""
        ...


def json_safe(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``metadata`` that survive a JSON round trip unchanged."""
    import json

    kept: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            continue
        try:
            if json.loads(json.dumps(value)) == value:
                kept[key] = value
        except (TypeError, ValueError, RecursionError):
            continue
    return kept


def history_entry(
    previous: StoredRecovery | None, recovery: StoredRecovery, at: float
) -> HistoryEntry | None:
    """The history entry a new recovery record adds, if its phase or attempt moved."""
    state = recovery.state
    if (
        previous is not None
        and previous.state.phase == state.phase
        and previous.state.attempt == state.attempt
    ):
        return None
    if state.phase == "done":
        detail = state.new_run_id
    elif state.phase == "exhausted" or (state.phase == "waiting" and state.error):
        detail = state.error
    else:
        detail = state.checkpoint
    return HistoryEntry(
        run_id=state.run_id,
        at=at,
        phase=state.phase,
        attempt=state.attempt,
        detail=detail,
    )
