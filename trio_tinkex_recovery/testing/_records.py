"""What the simulator records and reports: requests, restores, sessions, steps."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MASK",
    "RecordedRequest",
    "Restore",
    "SessionInfo",
    "TrainingStep",
    "iso",
]

#: What the request log shows instead of a secret header's value.
MASK = "***"


def iso(value: dt.datetime) -> str:
    """Render a datetime as the service does: ISO 8601 in UTC with a ``Z``."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@attrs.frozen
class RecordedRequest:
    """One request the simulator received, as recorded on arrival."""

    #: The HTTP method, upper case.
    method: str
    #: The URL path, e.g. ``"/api/v1/training_runs/run-1"``.
    path: str
    #: The query parameters (the last value of each name).
    query: Mapping[str, str]
    #: The headers, names in lower case; ``X-API-Key`` is masked as ``"***"``.
    headers: Mapping[str, str]
    #: The decoded JSON body, or ``None`` when there was none (or it was not JSON).
    json: Any
    #: When it arrived, in Trio time.
    time: float
    #: The kind of fault injected into it, if any.
    fault: str | None = None

    @property
    def idempotency_key(self) -> str | None:
        """The request's ``X-Idempotency-Key``, if it carried one."""
        return self.headers.get("x-idempotency-key")


@attrs.frozen
class Restore:
    """One model restored from a checkpoint (one performed ``load_weights``)."""

    #: The new model's id (also a training run id): ``{session}:train:{seq}``.
    model_id: str
    #: The run the checkpoint belongs to.
    source_run_id: str
    #: The checkpoint restored.
    tinker_path: str
    #: Whether the optimizer state was restored too.
    optimizer: bool
    #: The session the model belongs to.
    session_id: str


@attrs.frozen
class SessionInfo:
    """A snapshot of one session of the simulator."""

    #: The session's id.
    session_id: str
    #: The tags it was created with.
    tags: tuple[str, ...]
    #: The metadata it was created with.
    user_metadata: Mapping[str, Any]
    #: How many heartbeats it received.
    heartbeats: int
    #: The finish reason (``"success"``, ``"errored"``, ...), once finished.
    finished: str | None
    #: The ids of the models created in it, in order.
    model_ids: tuple[str, ...]


@attrs.frozen
class TrainingStep:
    """One request a model received: a training step or a save.

    ``kind`` is ``"forward_backward"``, ``"forward"`` (a forward-only pass),
    ``"optim_step"``, ``"save_weights"`` or ``"save_weights_for_sampler"``.
    A request repeated with the same ``seq_id`` (a retry) is recorded once.
    """

    #: The model (training run) it went to.
    model_id: str
    #: What it asked.
    kind: str
    #: Its ``seq_id``: the client's order of the requests to this model.
    seq_id: int | None
    #: The future that answers it.
    request_id: str
    #: When it arrived, in Trio time.
    time: float
    #: How many examples (``Datum``) a forward pass carried; 0 otherwise.
    examples: int = 0
    #: The loss function of a forward pass.
    loss_fn: str | None = None
    #: The learning rate of an optimizer step.
    learning_rate: float | None = None
    #: The checkpoint name of a save.
    name: str | None = None
    #: The model restored from this model's checkpoints before the request
    #: arrived, if any: the request went to a superseded model.
    superseded_by: str | None = None
    #: Whether the session that created the model had finished by then.
    session_finished: bool = False
