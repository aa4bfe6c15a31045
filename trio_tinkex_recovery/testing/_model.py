"""What the simulator's state is made of: runs, checkpoints, sessions.

Mutable, internal to the simulator: users see them through `FakeTinker`'s
methods, as the library's value objects (`TrainingRun`, `Checkpoint`).  The
``*_json`` methods render them as the service does on the wire.  `Refused`
is how the state turns an operation down.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._records import iso

if TYPE_CHECKING:
    from .._types import Checkpoint

__all__ = [
    "DEFAULT_EPOCH",
    "KIND_SEGMENT",
    "LIST_ORDERS",
    "ListOrder",
    "PendingFuture",
    "Refused",
    "StoredCheckpoint",
    "StoredLoad",
    "StoredRun",
    "StoredSession",
]

#: The path segment of each checkpoint type: ``tinker://{run}/{segment}/{name}``.
KIND_SEGMENT = {"training": "weights", "sampler": "sampler_weights"}

CheckpointKind = Literal["training", "sampler"]

#: The default start of the simulator's logical wall clock.
DEFAULT_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

#: The orders ``GET /api/v1/training_runs`` can list runs in.
ListOrder = Literal["recent", "id", "shuffled"]
LIST_ORDERS: tuple[ListOrder, ...] = ("recent", "id", "shuffled")

#: What a training request (or save) to a corrupted model gets: a failed
#: future (what the service does), a future that is never ready, or an
#: answer as if the model were healthy.
CorruptedRequests = Literal["fail", "hang", "succeed"]
CORRUPTED_REQUESTS: tuple[CorruptedRequests, ...] = ("fail", "hang", "succeed")


class Refused(Exception):
    """The service refuses an operation (the endpoints answer an HTTP error).

    Args:
        reason: ``"not_found"`` (no such thing), ``"gone"`` (it has ended)
            or ``"conflict"`` (it contradicts an earlier request).
        message: What the client is told.
    """

    def __init__(
        self, reason: Literal["not_found", "gone", "conflict"], message: str
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@attrs.define(eq=False)
class StoredCheckpoint:
    """One checkpoint of a run."""

    name: str
    kind: CheckpointKind
    time: dt.datetime
    metadata: dict[str, Any] | None = None
    expires_at: dt.datetime | None = None
    size_bytes: int | None = None
    deleted: bool = False

    def expired(self) -> bool:
        """Whether it has expired (by the wall clock)."""
        # The one wall-clock read of the simulator: expiry is a wall-clock
        # notion on the real service too, and tests pass past dates.
        return self.expires_at is not None and self.expires_at <= dt.datetime.now(
            dt.UTC
        )


@attrs.define(eq=False)
class StoredRun:
    """One training run, or one model restored from a checkpoint."""

    run_id: str
    base_model: str
    lora_rank: int | None
    model_owner: str
    user_metadata: dict[str, Any] | None
    last_request_time: dt.datetime
    corrupted: bool = False
    checkpoints: dict[tuple[str, str], StoredCheckpoint] = attrs.field(factory=dict)
    #: For a restored model: the checkpoint it was restored from.
    restored_from: Checkpoint | None = None
    #: The project it belongs to (list requests can filter by it).
    project_id: str | None = None
    #: For a restored model: the session that created it.
    session_id: str | None = None

    def path(self, ckpt: StoredCheckpoint) -> str:
        """The checkpoint's ``tinker://`` path."""
        return f"tinker://{self.run_id}/{KIND_SEGMENT[ckpt.kind]}/{ckpt.name}"

    def checkpoint_json(self, ckpt: StoredCheckpoint) -> dict[str, Any]:
        """One of its checkpoints, as the service reports it."""
        return {
            "checkpoint_id": f"{KIND_SEGMENT[ckpt.kind]}/{ckpt.name}",
            "checkpoint_type": ckpt.kind,
            "time": iso(ckpt.time),
            "tinker_path": self.path(ckpt),
            "size_bytes": ckpt.size_bytes,
            "public": False,
            "expires_at": None if ckpt.expires_at is None else iso(ckpt.expires_at),
            "user_metadata": ckpt.metadata,
        }

    def live(self, kind: str | None = None) -> list[StoredCheckpoint]:
        """Its checkpoints not deleted (of one kind, if given), oldest first."""
        return [
            c
            for c in self.checkpoints.values()
            if not c.deleted and (kind is None or c.kind == kind)
        ]

    def last_json(self, kind: CheckpointKind) -> dict[str, Any] | None:
        """Its newest checkpoint of a kind, as the service reports it."""
        live = self.live(kind)
        if live:
            return self.checkpoint_json(max(live, key=lambda c: c.time))
        if kind == "training" and self.restored_from is not None:
            return self.restored_from.to_json()
        return None

    def to_json(self) -> dict[str, Any]:
        """The run, as ``GET /api/v1/training_runs/{id}`` reports it."""
        return {
            "training_run_id": self.run_id,
            "base_model": self.base_model,
            "model_owner": self.model_owner,
            "is_lora": self.lora_rank is not None,
            "corrupted": self.corrupted,
            "lora_rank": self.lora_rank,
            "last_request_time": iso(self.last_request_time),
            "last_checkpoint": self.last_json("training"),
            "last_sampler_checkpoint": self.last_json("sampler"),
            "user_metadata": self.user_metadata,
        }

    def weights_info_json(self) -> dict[str, Any]:
        """What ``POST /api/v1/weights_info`` reports for its checkpoints."""
        return {
            "base_model": self.base_model,
            "is_lora": self.lora_rank is not None,
            "lora_rank": self.lora_rank,
            "train_unembed": True,
            "train_mlp": True,
            "train_attn": True,
        }


@attrs.define(eq=False)
class StoredLoad:
    """One ``load_weights`` of a session, by its ``model_seq_id``."""

    #: What was asked (path, optimizer): a repeat must ask the same.
    identity: tuple[Any, ...]
    request_id: str
    model_id: str
    #: Whether a model was created (the checkpoint could be restored).
    restored: bool


@attrs.define(eq=False)
class StoredSession:
    """One session, and the models it loaded."""

    session_id: str
    tags: tuple[str, ...]
    user_metadata: dict[str, Any]
    #: The project its models belong to.
    project_id: str | None = None
    heartbeats: int = 0
    finished: str | None = None
    #: model_seq_id -> the load_weights that used it
    loads: dict[int, StoredLoad] = attrs.field(factory=dict)


@attrs.define(eq=False)
class PendingFuture:
    """The result of an asynchronous operation, and when it may be fetched."""

    request_id: str
    result: dict[str, Any]
    #: How many more polls answer ``try_again`` before the result.
    try_again_left: int
    #: The Trio time before which polls answer ``try_again``.
    ready_at: float
