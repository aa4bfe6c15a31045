"""Checkpoint selection: which checkpoints a recovery tries, in which order.

`candidates` turns a strategy into a lazy sequence of checkpoints:

- ``Specific(path)``: that path, nothing else;
- ``Latest()``: the run's newest checkpoint (from the hand-off, the run as
  polled, or a fresh read of the run), then — only if the caller asks for
  more, which it does when fallback is on and a restore failed for a
  checkpoint reason — the run's other training checkpoints, newest first;
- ``Best(...)``: every usable training checkpoint, best first.

Expired and sampler checkpoints are never candidates.  The executor owns
what happens between candidates (restoring, falling back, giving up).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .._errors import NoCheckpointError, UnsupportedStrategyError
from .._policy import Best, Latest, Specific
from .._types import Checkpoint

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from .._policy import CheckpointStrategy
    from .._protocols import RestClientProtocol
    from .._types import TrainingRun

__all__ = ["candidates"]


async def candidates(
    strategy: CheckpointStrategy,
    *,
    run_id: str,
    rest: RestClientProtocol,
    last_checkpoint: Checkpoint | None = None,
    run: TrainingRun | None = None,
) -> AsyncGenerator[Checkpoint, None]:
    """Yield the checkpoints to try for ``strategy``, first choice first.

    The run's checkpoints are listed only when needed: for ``Best``, or
    when a ``Latest`` caller asks for more than the newest one.  Close the
    generator (``contextlib.aclosing``) when done.

    Raises:
        NoCheckpointError: ``Best`` found no checkpoint with a usable score.
        UnsupportedStrategyError: ``strategy`` is none of the known kinds.
        Exception: Whatever ``rest`` raised while reading the run.
    """
    if isinstance(strategy, Specific):
        yield Checkpoint.from_path(strategy.path)
        return
    if isinstance(strategy, Latest):
        first = last_checkpoint
        if first is None:
            if run is None:
                run = await rest.get_training_run(run_id)
            first = run.last_checkpoint
        tried = None
        if first is not None and not first.is_expired():
            tried = first.tinker_path
            yield first
        for checkpoint in _newest_first(_usable(await rest.list_checkpoints(run_id))):
            if checkpoint.tinker_path != tried:
                yield checkpoint
        return
    if isinstance(strategy, Best):
        usable = _usable(await rest.list_checkpoints(run_id))
        ranked = _best_first(usable, strategy)
        if not ranked:
            raise NoCheckpointError(
                f"run {run_id!r} has no checkpoint with a usable "
                f"{'key' if strategy.key else repr(strategy.metric)} value"
            )
        for checkpoint in ranked:
            yield checkpoint
        return
    # Policy validates the strategy's type; this guards subclasses.
    raise UnsupportedStrategyError(f"unsupported strategy {strategy!r}")


def _usable(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    return [
        c for c in checkpoints if c.checkpoint_type == "training" and not c.is_expired()
    ]


def _newest_first(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    # Checkpoints without a time sort last; ties keep the server's order.
    return sorted(
        checkpoints,
        key=lambda c: c.time.timestamp() if c.time is not None else -math.inf,
        reverse=True,
    )


def _best_first(checkpoints: list[Checkpoint], strategy: Best) -> list[Checkpoint]:
    scored = [(strategy.score(c), c) for c in _newest_first(checkpoints)]
    usable = [(score, c) for score, c in scored if score is not None]
    # sorted() is stable: among equal scores the newest stays first.
    usable.sort(key=lambda pair: pair[0] if strategy.mode == "min" else -pair[0])
    return [c for _, c in usable]
