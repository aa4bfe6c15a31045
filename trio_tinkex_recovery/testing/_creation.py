"""New models and the clock: what a training script's first start meets.

`new_model` is ``create_model``: a LoRA adapter with no checkpoint until
its client saves one.  `Clock` stamps ``last_request_time`` and new
checkpoints: a logical clock (a minute a tick from an epoch) by default,
the wall clock when the simulator is served for ``watch --all``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import attrs

from ._model import CORRUPTED_REQUESTS, CorruptedRequests, Refused, StoredLoad

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._model import StoredRun, StoredSession

__all__ = ["Clock", "check_corrupted_requests", "new_model"]


def new_model(
    runs: dict[str, StoredRun],
    session: StoredSession,
    seq: int,
    run: StoredRun,
    new_future: Callable[[dict[str, Any]], str],
) -> tuple[str, str]:
    """Create ``run`` (model ``{session}:train:{seq}``) in ``session``.

    It has no checkpoint until its client saves one.  Asking again for the
    same ``seq`` with the same arguments answers the first future.

    Returns:
        ``(request_id, model_id)``.

    Raises:
        Refused: ``seq`` was used for another request, or the model exists.
    """
    identity = ("create_model", run.base_model, run.lora_rank, repr(run.user_metadata))
    model_id = run.run_id
    previous = session.loads.get(seq)
    if previous is not None:
        if previous.identity != identity:
            raise Refused(
                "conflict", f"model_seq_id {seq} of this session is already used"
            )
        return previous.request_id, model_id
    if model_id in runs:
        raise Refused("conflict", f"model {model_id!r} exists already")
    runs[model_id] = attrs.evolve(run, project_id=session.project_id)
    request_id = new_future({"type": "create_model", "model_id": model_id})
    session.loads[seq] = StoredLoad(
        identity=identity, request_id=request_id, model_id=model_id, restored=True
    )
    return request_id, model_id


class Clock:
    """The simulator's timestamps: logical from ``epoch``, or the wall clock."""

    def __init__(self, epoch: dt.datetime) -> None:
        self._epoch = epoch
        self._ticks = 0
        self._last = dt.datetime.min.replace(tzinfo=dt.UTC)

    def stamp(self, *, wall: bool) -> dt.datetime:
        """The next timestamp; the wall clock's never repeats an instant."""
        self._ticks += 1
        if not wall:
            return self._epoch + dt.timedelta(minutes=self._ticks)
        now = dt.datetime.now(dt.UTC)
        self._last = max(now, self._last + dt.timedelta(microseconds=1))
        return self._last


def check_corrupted_requests(value: object) -> CorruptedRequests:
    """``value`` if it is one of `CORRUPTED_REQUESTS`.

    Raises:
        ValueError: It is not.
    """
    for choice in CORRUPTED_REQUESTS:
        if value == choice:
            return choice
    raise ValueError(
        f"corrupted_requests must be one of {', '.join(CORRUPTED_REQUESTS)}, "
        f"got {value!r}"
    )
