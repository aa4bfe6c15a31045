"""Where each run stands with one monitor: the episode rule's one home.

One restore per corruption episode (from the first poll that sees a run
corrupted until one sees it healthy again) is the promise.  Every way a run
reaches the monitor (`Monitor.monitor_run`, discovery by ``monitor_all``,
resuming a journal at start, a lease gained, following a restored run to
its successor) asks `Book.standing` and acts on the answer with no
``await`` in between, so that no two of them can start a watch or a
recovery of one run in one episode.

Memory stays proportional to the runs watched or recovering now, plus a
bounded history (`HISTORY` entries of each kind): the runs restored in
their current episode, the runs stopped by name, the run ids a list page
carried that are not valid.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from ._watch import Watch

__all__ = ["HISTORY", "Book", "Bounded", "Standing"]

#: Entries kept of each kind of history (the oldest are forgotten first).
HISTORY: Final = 10_000

#: Where a run stands: polled now, handed to the executor (its outcome
#: awaited), restored in its current episode (its successor watched, or it
#: is polled without restoring again), stopped by name, or none of these.
Standing = Literal["watched", "handed", "restored", "stopped", "new"]

_V = TypeVar("_V")


class Bounded(Generic[_V]):
    """A mapping that keeps its ``limit`` most recently set entries."""

    def __init__(self, limit: int = HISTORY) -> None:
        self._limit = limit
        self._items: OrderedDict[str, _V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> _V | None:
        """The value kept for ``key``, if any."""
        return self._items.get(key)

    def set(self, key: str, value: _V) -> None:
        """Keep ``value`` for ``key``; forget the oldest entry past the limit."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def pop(self, key: str) -> _V | None:
        """Forget ``key``; its value, if any."""
        return self._items.pop(key, None)


class Book:
    """The runs of one monitor, by where they stand."""

    def __init__(self, history: int = HISTORY) -> None:
        #: Runs polled now.
        self.watches: dict[str, Watch] = {}
        #: Runs handed to the executor, their outcome awaited.
        self.handed: dict[str, Watch] = {}
        #: Runs restored in their current episode, with their successor.
        self.successors: Bounded[str | None] = Bounded(history)
        #: Runs stopped by name: discovery leaves them be.
        self.stopped: Bounded[None] = Bounded(history)
        #: Listed run ids that are not valid (logged once each).
        self.rejected: Bounded[None] = Bounded(history)
        #: Listed runs offered to the replicas that share the store.
        self.offered: Bounded[None] = Bounded(history)

    def standing(self, run_id: str) -> Standing:
        """Where ``run_id`` stands now (handed over wins over the rest)."""
        if run_id in self.handed:
            return "handed"
        if run_id in self.watches:
            return "watched"
        if run_id in self.successors:
            return "restored"
        if run_id in self.stopped:
            return "stopped"
        return "new"
