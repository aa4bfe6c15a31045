"""The order the simulator lists runs in, kept sorted as runs change.

A list request asks for one page: ``offset``, ``limit``, an owner and a
project filter.  Filtering and sorting every run for every page costs
O(n log n) a page (about 10 ms at 50,000 runs); a real service pages
from an index.  `RunIndex` keeps, for each (order, owner, project) asked
for so far, the matching runs sorted, and moves a run when its
``last_request_time`` changes, so a page costs O(log n + limit) and a
change O(log n) plus a list insertion.

``"shuffled"`` has no index: each request draws a new order, which costs
O(n) whatever one does.
"""

from __future__ import annotations

import bisect
import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random
    from collections.abc import Iterable

    from ._model import ListOrder, StoredRun

__all__ = ["Listing", "RunIndex"]

_REF = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

#: (order, owner or None, project or None)
_ViewKey = tuple[str, str | None, str | None]


def _time_key(time: dt.datetime, created: int) -> tuple[Any, ...]:
    # Newest first; runs of one time in creation order (as a stable sort).
    return (-((time - _REF) // _MICROSECOND), created)


def _recent_key(run: StoredRun, created: int) -> tuple[Any, ...]:
    return _time_key(run.last_request_time, created)


def _id_key(run: StoredRun, created: int) -> tuple[Any, ...]:
    return (run.run_id,)


_KEYS = {"recent": _recent_key, "id": _id_key}


class _View:
    """The runs matching one filter, sorted by one order's key."""

    __slots__ = ("keys", "owner", "project", "runs")

    def __init__(self, owner: str | None, project: str | None) -> None:
        self.owner = owner
        self.project = project
        self.keys: list[tuple[Any, ...]] = []
        self.runs: list[StoredRun] = []

    def matches(self, run: StoredRun) -> bool:
        return (self.owner is None or run.model_owner == self.owner) and (
            self.project is None or run.project_id == self.project
        )

    def insert(self, key: tuple[Any, ...], run: StoredRun) -> None:
        at = bisect.bisect_left(self.keys, key)
        self.keys.insert(at, key)
        self.runs.insert(at, run)

    def remove(self, key: tuple[Any, ...]) -> None:
        at = bisect.bisect_left(self.keys, key)
        del self.keys[at]
        del self.runs[at]


class RunIndex:
    """Every run, in each list order asked for, kept sorted.

    Tell it of each new run (`add`) and change a run's
    ``last_request_time`` through it (`touch`); `page` answers a list
    request.
    """

    def __init__(self) -> None:
        self._created: dict[str, int] = {}
        self._views: dict[_ViewKey, _View] = {}

    def add(self, run: StoredRun) -> None:
        """A new run: it joins every view it matches (a known one: nothing)."""
        if run.run_id in self._created:
            return
        created = self._created[run.run_id] = len(self._created)
        for (order, _, _), view in self._views.items():
            if view.matches(run):
                view.insert(_KEYS[order](run, created), run)

    def touch(self, run: StoredRun, after: dt.datetime) -> None:
        """Set ``run.last_request_time`` to ``after``, and re-sort the run."""
        before, run.last_request_time = run.last_request_time, after
        created = self._created[run.run_id]
        for (order, _, _), view in self._views.items():
            if order != "recent" or not view.matches(run):
                continue
            view.remove(_time_key(before, created))
            view.insert(_time_key(after, created), run)

    def page(
        self,
        runs: Iterable[StoredRun],
        *,
        order: str,
        owner: str | None,
        project: str | None,
        offset: int,
        limit: int,
        rng: random.Random,
    ) -> tuple[list[StoredRun], int]:
        """One page of the matching runs in ``order``, and how many match.

        ``"recent"`` and ``"id"`` pages come from a view kept in order
        (O(log n + limit) a page, whatever the fleet); ``"shuffled"`` draws
        a new order of every matching run from ``rng`` per request.

        Args:
            runs: Every run, in creation order (read once, to build a view
                the first time it is asked for).
            order: ``"recent"``, ``"id"`` or ``"shuffled"``.
            owner: Only this owner's runs, if given.
            project: Only this project's runs, if given.
            offset: The first run of the page.
            limit: The most runs in the page.
            rng: Draws the ``"shuffled"`` orders.
        """
        if order == "shuffled":
            probe = _View(owner, project)
            matching = [run for run in runs if probe.matches(run)]
            rng.shuffle(matching)
            return matching[offset : offset + limit], len(matching)
        view = self._views.get((order, owner, project))
        if view is None:
            view = _View(owner, project)
            key = _KEYS[order]
            pairs = sorted(
                (key(run, self._created[run.run_id]), run)
                for run in runs
                if view.matches(run)
            )
            view.keys = [k for k, _ in pairs]
            view.runs = [run for _, run in pairs]
            self._views[(order, owner, project)] = view
        return view.runs[offset : offset + limit], len(view.runs)


class Listing:
    """What a list request reads of the simulator's state (`TinkerState`)."""

    _runs: dict[str, StoredRun]
    _index: RunIndex
    _list_rng: random.Random
    list_order: ListOrder
    model_owner: str

    def listed_runs(
        self, *, owned_only: bool, project_id: str | None = None
    ) -> list[StoredRun]:
        """The runs a list request shows, in `list_order`, restored models included.

        Args:
            owned_only: Only the runs whose owner is `model_owner` (the
                caller: ``access_scope=owned``), else every run
                (``access_scope=accessible``).
            project_id: Only the runs of this project, if given.
        """
        every = len(self._runs)
        return self.list_page(
            owned_only=owned_only, project_id=project_id, offset=0, limit=every
        )[0]

    def list_page(
        self,
        *,
        owned_only: bool,
        project_id: str | None = None,
        offset: int,
        limit: int,
    ) -> tuple[list[StoredRun], int]:
        """One page of `listed_runs`, and how many runs the list holds
        (from an index kept in order: see `RunIndex.page`)."""
        return self._index.page(
            self._runs.values(),
            order=self.list_order,
            owner=self.model_owner if owned_only else None,
            project=project_id,
            offset=offset,
            limit=limit,
            rng=self._list_rng,
        )
