"""A run's checkpoints as the supervisor sees them: its own, and its start.

A restarted child's new run has no checkpoint of its own until it saves
one; corrupted before that, it must be restarted from the checkpoint it
was itself resumed from.  The supervisor therefore reads runs through
`Lineage`, the real REST client except that a run's checkpoint list also
holds the checkpoint its child started from (a training checkpoint of an
older run).  The engine's checkpoint selection then treats it like any
other candidate: by the strategy, expired skipped, older as fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import NotFoundError
from .._protocols import ListingRestClientProtocol
from .._types import Checkpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._protocols import RestClientProtocol
    from .._types import TrainingRun, TrainingRunPage

__all__ = ["Lineage", "ListingLineage", "lineage_of"]


class Lineage:
    """The real REST client, with each resumed run's starting checkpoint."""

    def __init__(self, rest: RestClientProtocol) -> None:
        self.rest = rest
        #: The checkpoint each run's child was started from, by run id.
        self.resumed_from: dict[str, str] = {}

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """The run as the service reports it."""
        return await self.rest.get_training_run(run_id)

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, and the one its child resumed from."""
        own = await self.rest.list_checkpoints(run_id)
        path = self.resumed_from.get(run_id)
        if path is None or any(c.tinker_path == path for c in own):
            return own
        try:
            theirs = await self.rest.list_checkpoints(Checkpoint.from_path(path).run_id)
        except NotFoundError:
            return own
        return [*own, *(c for c in theirs if c.tinker_path == path)]


class ListingLineage(Lineage):
    """`Lineage` over a REST client that can list runs (its pages, as they are)."""

    rest: ListingRestClientProtocol

    def __init__(self, rest: ListingRestClientProtocol) -> None:
        super().__init__(rest)
        #: One page of the runs the key can see: the real client's.
        self.list_training_runs: Callable[..., Awaitable[TrainingRunPage]] = (
            rest.list_training_runs
        )


def lineage_of(rest: Any) -> Lineage:
    """`ListingLineage` over a client that lists runs, else `Lineage`."""
    if isinstance(rest, ListingRestClientProtocol):
        return ListingLineage(rest)
    return Lineage(rest)
