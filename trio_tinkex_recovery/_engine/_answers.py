"""What a poll through a batcher is answered with, and what it counts.

A run's task waiting in a `Batcher` is handed its run's JSON from a page,
`FETCH` (get the run with its own request) or `Failed` (the sweep meant to
find it failed); a healthy row may instead be answered in place by the
run's `Inline` handler.  `read_listed` reads the two fields a poll needs
from a listed run without structuring it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs

from .._errors import ResponseValidationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "FETCH",
    "Answer",
    "Discovery",
    "Failed",
    "Inline",
    "PollCounts",
    "read_listed",
]


class _Fetch(enum.Enum):
    """The answer telling a run's task to GET its run itself."""

    FETCH = "fetch"


#: Get the run with its own request.
FETCH: Final = _Fetch.FETCH


@attrs.frozen
class Failed:
    """The answer for a run a failed sweep was meant to find."""

    #: Why the sweep failed.
    error: Exception


#: What a waiting run's task is handed: its run's JSON from a page, `FETCH`
#: or `Failed`.
Answer: TypeAlias = "Mapping[str, Any] | Literal[_Fetch.FETCH] | Failed"
#: Answers a poll from a listed run's JSON without waking the run's task,
#: given when the poll began; whether it did (else the task is woken).
Inline: TypeAlias = "Callable[[Mapping[str, Any], float], bool]"


@attrs.define
class PollCounts:
    """Polls started, and the API requests sent for them, by kind."""

    polls: int = 0
    gets: int = 0
    lists: int = 0
    #: Sweeps cut short: the list did not hold the runs it claimed.
    lies: int = 0


@attrs.frozen
class Discovery:
    """What a discovering sweep lists, and who hears of each run it sees."""

    #: ``"owned"`` or ``"accessible"``.
    scope: Literal["owned", "accessible"]
    #: Only the runs of this project, if given.
    project_id: str | None
    #: Called with every run a discovering sweep lists that no waiting run's
    #: task took: ``(run_id, run_json)``.  Sync; it must not block.
    on_listed: Callable[[str, Mapping[str, Any]], None]


def read_listed(item: Mapping[str, Any]) -> tuple[bool, str | None]:
    """``(corrupted, last checkpoint path)`` of a run's JSON, checked cheaply.

    Only the two fields a poll needs are read; the whole run is structured
    (`TrainingRun.from_json`) only when it is handed over for recovery.

    Raises:
        ResponseValidationError: One of the two is mistyped.
    """
    corrupted = item.get("corrupted", False)
    if corrupted is not True and corrupted is not False:
        raise ResponseValidationError(
            "malformed TrainingRun: expected a bool at $.corrupted, "
            f"got {type(corrupted).__name__}"
        )
    last = item.get("last_checkpoint")
    if last is None:
        return corrupted, None
    path = last.get("tinker_path") if hasattr(last, "get") else None
    if not isinstance(path, str):
        raise ResponseValidationError(
            "malformed TrainingRun: expected a str at $.last_checkpoint.tinker_path, "
            f"got {type(path).__name__}"
        )
    return corrupted, path
