"""The requests each model received: training steps and saves, by ``seq_id``.

`ModelLog` is bookkeeping the state keeps per model, apart from the models
themselves: which ``seq_id`` each request used (a retry with the same
``seq_id`` and the same arguments answers the first request's future; other
arguments are refused), the `TrainingStep` records in arrival order, and
which model superseded which (a restore from a model's checkpoints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._model import Refused

if TYPE_CHECKING:
    from ._records import TrainingStep

__all__ = ["ModelLog"]


class ModelLog:
    """Per model: the ``seq_id`` used, the steps received, its successor."""

    def __init__(self) -> None:
        #: (model_id, seq_id) -> (what the request asked, its future's id)
        self._seqs: dict[tuple[str, int], tuple[tuple[Any, ...], str]] = {}
        self._steps: dict[str, list[TrainingStep]] = {}
        self._successors: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<ModelLog models={len(self._steps)}>"

    def earlier(
        self, model_id: str, seq_id: int | None, identity: tuple[Any, ...]
    ) -> str | None:
        """The future of an earlier request with this ``seq_id``, if any.

        Raises:
            Refused: The earlier request asked something else.
        """
        if seq_id is None:
            return None
        previous = self._seqs.get((model_id, seq_id))
        if previous is None:
            return None
        if previous[0] != identity:
            raise Refused(
                "conflict", f"seq_id {seq_id} of {model_id!r} is already used"
            )
        return previous[1]

    def add(self, step: TrainingStep, identity: tuple[Any, ...]) -> None:
        """Record a step, and what its ``seq_id`` asked."""
        if step.seq_id is not None:
            self._seqs[(step.model_id, step.seq_id)] = (identity, step.request_id)
        self._steps.setdefault(step.model_id, []).append(step)

    def supersede(self, model_id: str, successor: str) -> None:
        """Note that ``successor`` was restored from ``model_id``'s checkpoints."""
        self._successors[model_id] = successor

    def successor(self, model_id: str) -> str | None:
        """The latest model restored from ``model_id``'s checkpoints, if any."""
        return self._successors.get(model_id)

    def steps(self, model_id: str) -> list[TrainingStep]:
        """The steps ``model_id`` received, in arrival order."""
        return list(self._steps.get(model_id, ()))
