"""Coalesced polling: one page of the run list answers for many runs.

Each watched run keeps its own task and cancel scope (``_monitor``).  When a
run read through a REST client that can list runs
(`ListingRestClientProtocol`) falls due, its task asks that client's
`Batcher` for the run's state and waits.  The batcher serves the asks that
fell due together in one *cycle*:

- a *sweep* pages through ``GET /api/v1/training_runs`` (a few pages at
  once) and answers each waiting run from the page that holds it, as soon
  as that page arrives;
- a waiting run the sweep missed (offset pages shift while runs are
  created or reordered) is told to GET its run itself, in the same cycle;
- in ``"auto"`` mode, when one GET per due run costs fewer requests than
  the ⌈total/P⌉ pages of a sweep (as the last sweep counted them), every
  due run is told to GET itself, and a sweep stops early once the pages
  left outnumber the runs it still has to find.

Runs coalesce because they fall due together: a run read through a
batcher is polled on the batcher's grid (``origin + k·interval``) after its
first poll, never later than its own schedule (its second poll may come
early to join the grid).  A run's task asks before its poll is due and
waits, parked, until the cycle answers it: the batcher keeps one timer for
all its runs (a ``trio.sleep_until`` per run and poll costs more than
reading the run from a page).

A sweep believes no list blindly: it ends at the first empty page, at the
first page that lists no run the sweep has not seen, and after at most
⌈watched runs / P⌉ + ``max_list_pages`` pages (`MAX_LIST_PAGES` by default:
1,000 pages, 100,000 runs, beyond those the watched runs fill).  A sweep
cut short so is counted (``statistics().list_lies``) and logged once, and
the next sweeps size the list by the runs it really listed.  Pages are sent
a few at a time at first, more as each brings new runs (up to
`PAGE_CONCURRENCY` once a sweep has read a list to its end), so a list that
lies costs a handful of requests a sweep, whatever count it claims.

A page that fails is a ``poll_error`` for every due run the sweep did not
answer, never a reason to recover.  A service without the list endpoint
(HTTP 404, 405 or 501) is polled one GET per run from then on, logged once.
"""

from __future__ import annotations

import enum
import heapq
import logging
import math
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, final

import attrs
import outcome
import trio

from .._errors import APIStatusError, ResponseValidationError
from .._text import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .._protocols import ListingRestClientProtocol

__all__ = [
    "FETCH",
    "MAX_LIST_PAGES",
    "POLLING_MODES",
    "Batcher",
    "Discovery",
    "DiscoveryRound",
    "Failed",
    "PollCounts",
    "PollingMode",
    "check_max_list_pages",
    "check_polling",
    "read_listed",
]

logger = logging.getLogger("trio_tinkex_recovery")

PollingMode: TypeAlias = Literal["auto", "list", "each"]
#: ``"auto"``: per cycle, whichever of a sweep and one GET per due run needs
#: fewer requests; ``"list"``: always a sweep; ``"each"``: one GET per run.
POLLING_MODES: Final[tuple[PollingMode, ...]] = ("auto", "list", "each")
#: Runs asked for per page (the official CLI pages by 100 too).
PAGE_SIZE: Final = 100
#: Pages of one sweep in flight at once, at most.
PAGE_CONCURRENCY: Final = 20
#: Pages a sweep reads at most beyond those its watched runs fill, by
#: default (``open_monitor(max_list_pages=...)``): 100,000 runs.
MAX_LIST_PAGES: Final = 1000
#: Statuses saying the service has no list endpoint.
_NO_LIST: Final = frozenset({404, 405, 501})


def check_polling(polling: object) -> PollingMode:
    """``polling`` if it is a polling mode.

    Raises:
        ValueError: It is not one of `POLLING_MODES`.
    """
    for mode in POLLING_MODES:
        if polling == mode:
            return mode
    raise ValueError(f"polling must be 'auto', 'list' or 'each', got {polling!r}")


def check_max_list_pages(max_list_pages: object) -> int:
    """``max_list_pages`` if it is a whole number of pages, at least one.

    Raises:
        ValueError: It is not an ``int`` >= 1.
    """
    if (
        isinstance(max_list_pages, bool)
        or not isinstance(max_list_pages, int)
        or max_list_pages < 1
    ):
        raise ValueError(
            "max_list_pages must be a whole number of pages >= 1, "
            f"got {max_list_pages!r}"
        )
    return max_list_pages


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


def _unsupported(exc: Exception) -> bool:
    return isinstance(exc, APIStatusError) and exc.status in _NO_LIST


@attrs.define(eq=False)
class DiscoveryRound:
    """One discovering sweep, as those who asked for it wait for it."""

    #: What it lists, and who hears of it.
    discovery: Discovery
    #: Set when the sweep is over.
    done: trio.Event = attrs.field(factory=trio.Event)
    #: Why it failed, if it did.
    error: Exception | None = None


@attrs.define(eq=False)
class _Ask:
    task: trio.lowlevel.Task
    due: float


@attrs.define(eq=False)
class _Sweep:
    """One sweep's progress: what is left to fetch and to find."""

    #: The runs due when the cycle began or asking since, not found yet.
    due: set[str]
    #: List every page (a discovering sweep), not only until ``due`` is found.
    full: bool
    discovery: Discovery | None
    #: The list size the pages claim (the latest page's ``total_count``).
    total: int | None = None
    next_offset: int = 0
    #: Ranges ``[start, end)`` a short page left unread, read first.
    gaps: list[tuple[int, int]] = attrs.field(factory=list)
    error: Exception | None = None
    #: Every run the pages listed so far.
    seen: set[str] = attrs.field(factory=set)
    #: Pages sent, pages in flight, pages that listed a run not seen before.
    pages: int = 0
    in_flight: int = 0
    fresh: int = 0
    #: Why the sweep stopped before the pages the list claims, if it did.
    cut: str | None = None
    #: Set when a page comes back.
    changed: trio.Event = attrs.field(factory=trio.Event)


@final
class Batcher:
    """Coalesces the polls of one REST client's runs into list pages.

    Made and driven by the monitor: one per REST client that can list runs.
    Its cycles run in a task of the monitor's nursery, started when a run
    asks and ending when no run waits (never, once it keeps discovering).
    """

    def __init__(
        self,
        rest: ListingRestClientProtocol,
        *,
        mode: PollingMode,
        interval: float,
        nursery: trio.Nursery,
        counts: PollCounts,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self.rest = rest
        self.mode = mode
        self.interval = interval
        #: Pages a sweep reads at most beyond those the members fill.
        self.max_pages = max_pages
        self._nursery = nursery
        self._counts = counts
        #: Runs polled through this batcher now.
        self.members = 0
        #: The list size: as the last sweep's pages claimed it, or as many
        #: runs as they listed if they did not bear the claim out.
        self.total: int | None = None
        #: Runs per page: `PAGE_SIZE`, or less if the service caps pages.
        self.page_size = PAGE_SIZE
        #: Why the service cannot list runs, once it said so.
        self.unsupported: Exception | None = None
        # Whether the last sweep ended as the list said (all pages at once
        # then), and whether a list cut short was logged already.
        self._honest = False
        self._lie_logged = False
        self._origin = trio.current_time()
        self._first_at: float | None = None
        # Asks due now, and asks parked until their due time (by due time,
        # with a heap of those times; emptied groups are dropped lazily).
        self._waiting: dict[str, _Ask] = {}
        self._later: dict[float, dict[str, _Ask]] = {}
        self._later_times: list[float] = []
        self._running = False
        self._sleeping_until = math.inf
        self._wakeup = trio.Event()
        self._sweeping: _Sweep | None = None
        # Discovering sweeps, one per grid time once `keep_discovering`.
        self._discovery: Discovery | None = None
        self._next_discovery = math.inf
        self._round: DiscoveryRound | None = None

    def __repr__(self) -> str:
        return (
            f"<Batcher mode={self.mode!r} members={self.members} "
            f"total={self.total} listing={self.unsupported is None}>"
        )

    # -- schedules -----------------------------------------------------------

    def coalesces(self) -> bool:
        """Whether runs should be polled on the shared grid now."""
        if self.unsupported is not None or self.mode == "each":
            return False
        if self.mode == "list" or self.total is None or self._discovery is not None:
            return True
        if self._sweeping is not None and self._sweeping.full:
            return True  # Runs a discovering sweep finds join the grid at once.
        return math.ceil(self.total / self.page_size) < self.members

    def next_due(self, due: float, now: float) -> float:
        """The first grid time after ``due`` and not before ``now``.

        With an interval too small to count slots in, ``now``.
        """
        interval, origin = self.interval, self._origin
        after = (due - origin) / interval
        since = (now - origin) / interval
        if not (math.isfinite(after) and math.isfinite(since)):
            return now
        slot = max(math.floor(after) + 1, math.ceil(since))
        when = origin + slot * interval
        if when <= due:
            when = origin + (slot + 1) * interval
        return when if when > due else now

    def first_due(self, now: float, due: float, latest: float) -> float:
        """When a new run polls first: with others, if that is in its window.

        ``due`` is its own choice in ``[now, latest]``; another new run's
        first poll or a grid time (after ``now``) in that window is taken
        instead.
        """
        if self._first_at is not None and now <= self._first_at <= latest:
            return self._first_at
        if self.coalesces():
            grid = self.next_due(now, now)
            if grid <= latest:
                return grid
        self._first_at = due
        return due

    # -- asking ----------------------------------------------------------------

    async def ask(self, run_id: str, due: float) -> Answer:
        """``run_id``'s state, polled at ``due`` (Trio time) or as soon after.

        Waits, parked, until the cycle that serves it; the poll counts as
        started once it is due.  Cancelled, the ask is withdrawn: no answer
        is kept for it.
        """
        ask = _Ask(trio.lowlevel.current_task(), due)
        if due <= trio.current_time():
            self._enqueue(run_id, ask)
            poke = True
        else:
            group = self._later.get(due)
            if group is None:
                group = self._later[due] = {}
                heapq.heappush(self._later_times, due)
            group[run_id] = ask
            poke = due < self._sleeping_until
        if poke or not self._running:
            self._poke()

        def abort(_: object) -> trio.lowlevel.Abort:
            if self._waiting.get(run_id) is ask:
                del self._waiting[run_id]
            group = self._later.get(ask.due)
            if group is not None and group.get(run_id) is ask:
                del group[run_id]
                if not group:
                    del self._later[ask.due]
            return trio.lowlevel.Abort.SUCCEEDED

        answer: Answer = await trio.lowlevel.wait_task_rescheduled(abort)
        return answer

    def _enqueue(self, run_id: str, ask: _Ask) -> None:
        """``ask`` is due: the next cycle (or the sweep under way) serves it."""
        self._counts.polls += 1
        self._waiting[run_id] = ask
        if self._sweeping is not None:
            # The pages still to come may hold it: no need to wait a cycle.
            self._sweeping.due.add(run_id)

    def _release(self, now: float) -> float:
        """Enqueue what is due by ``now``; when the next thing is due.

        Parked asks due by ``now`` join the waiting ones; a discovering
        sweep due by ``now`` is asked for.
        """
        if self._discovery is not None and self._next_discovery <= now:
            self._next_discovery = self.next_due(now, now)
            if self._round is None:
                self._round = DiscoveryRound(self._discovery)
        times = self._later_times
        while times:
            due = times[0]
            group = self._later.get(due)
            if group is not None and due > now:
                return min(due, self._next_discovery)
            heapq.heappop(times)
            if group is not None:
                del self._later[due]
                for run_id, ask in group.items():
                    self._enqueue(run_id, ask)
        return self._next_discovery

    def discover(self, discovery: Discovery) -> DiscoveryRound:
        """Sweep every page soon, telling ``discovery`` of what it lists."""
        if self._round is None:
            self._round = DiscoveryRound(discovery)
        else:
            self._round.discovery = discovery
        self._poke()
        return self._round

    def keep_discovering(self, discovery: Discovery) -> None:
        """Sweep every page at each grid time from now on, for ``discovery``.

        The runs are then polled on the grid whatever the mode: the
        discovering sweeps answer them.  A failed sweep is logged.
        """
        if self._discovery is None:
            now = trio.current_time()
            self._next_discovery = self.next_due(now, now)
        self._discovery = discovery
        self._poke()

    def _poke(self) -> None:
        """Have the runner look again at what is due."""
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run)
        else:
            self._wakeup.set()

    # -- cycles ----------------------------------------------------------------

    async def _run(self) -> None:
        """Serve cycles while runs ask; sleep until the next parked one is due.

        Started by an ask: by the time this runs, every run that fell due at
        the same moment has asked too.
        """
        try:
            while True:
                next_due = self._release(trio.current_time())
                if self._waiting or self._round is not None:
                    await self._cycle()
                    continue
                if next_due == math.inf:
                    return
                self._wakeup = trio.Event()
                self._sleeping_until = next_due
                try:
                    with trio.move_on_at(next_due):
                        await self._wakeup.wait()
                finally:
                    self._sleeping_until = math.inf
        finally:
            self._running = False

    def _worth_listing(self, due: int) -> bool:
        if self.mode == "list":
            return True
        if self.mode == "each":
            return False
        if self.total is None:
            return due > 1
        return math.ceil(self.total / self.page_size) < due

    async def _cycle(self) -> None:
        round_, self._round = self._round, None
        discovery = round_.discovery if round_ is not None else None
        due = set(self._waiting)  # Every ask so far: each was due when made.
        error: Exception | None = None
        if self.unsupported is None and (
            discovery is not None or self._worth_listing(len(due))
        ):
            sweep = _Sweep(due=due, full=discovery is not None, discovery=discovery)
            self._sweeping = sweep
            try:
                await self._sweep(sweep)
            finally:
                self._sweeping = None
            error = sweep.error
        # Whoever waits and was not found: a GET each, or the sweep's failure.
        answer: Answer = (
            Failed(error) if error is not None and self.unsupported is None else FETCH
        )
        waiting, self._waiting = self._waiting, {}
        for ask in waiting.values():
            trio.lowlevel.reschedule(ask.task, outcome.Value(answer))
        if round_ is not None:
            round_.error = error
            round_.done.set()
            if error is not None and self._discovery is not None:
                logger.warning(
                    "listing runs to discover new ones failed: %s",
                    printable(str(error)),
                )

    async def _sweep(self, sweep: _Sweep) -> None:
        """Read pages until the sweep has what it needs, or the list runs dry.

        The first page goes alone when the list size is unknown (it tells
        how many pages there are); then up to one page more in flight than
        pages that listed new runs (doubling each round trip), or
        `PAGE_CONCURRENCY` at once if the last sweep read the list to its
        end.  A short page leaves a gap, read again.
        """
        sweep.total = self.total
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    while sweep.in_flight < self._in_flight_cap(
                        sweep
                    ) and self._take_more(sweep):
                        sweep.in_flight += 1
                        nursery.start_soon(self._fetch, sweep, *self._take_range(sweep))
                    if not sweep.in_flight:
                        break
                    sweep.changed = trio.Event()
                    await sweep.changed.wait()
        finally:
            self._swept(sweep)

    def _in_flight_cap(self, sweep: _Sweep) -> int:
        """How many of ``sweep``'s pages may be in flight now."""
        if sweep.total is None:
            return 1
        if self._honest:
            return PAGE_CONCURRENCY
        return min(PAGE_CONCURRENCY, 1 + sweep.fresh)

    def page_cap(self) -> int:
        """The most pages a sweep reads: the members' pages, plus `max_pages`."""
        return math.ceil(self.members / self.page_size) + self.max_pages

    def _take_more(self, sweep: _Sweep) -> bool:
        """Whether the sweep should fetch another page."""
        if sweep.error is not None or sweep.cut is not None:
            return False
        if sweep.next_offset == 0:
            return True  # The first page, whatever the last sweep counted.
        total = sweep.total or 0
        if not sweep.gaps and sweep.next_offset >= total:
            return False
        if not sweep.full:
            if not sweep.due:
                return False
            pages_left = len(sweep.gaps) + math.ceil(
                max(total - sweep.next_offset, 0) / self.page_size
            )
            if self.mode != "list" and pages_left >= len(sweep.due):
                return False
        if sweep.pages >= self.page_cap():
            sweep.cut = f"the cap of {sweep.pages} pages was reached"
            return False
        return True

    def _swept(self, sweep: _Sweep) -> None:
        """Learn from a sweep: the list's size, and whether it can be trusted."""
        if sweep.cut is None:
            if sweep.total is not None:
                self.total = sweep.total
            if sweep.error is None:
                self._honest = True
            return
        self._honest = False
        self.total = len(sweep.seen)
        self._counts.lies += 1
        if not self._lie_logged:
            self._lie_logged = True
            logger.warning(
                "the run list claims %d runs, but a sweep ended after %d "
                "page(s) listing %d: %s; sweeps stop there (at most %d pages "
                "each, %d beyond the watched runs'; max_list_pages) and the "
                "list is sized by what they list (logged once)",
                sweep.total or 0,
                sweep.pages,
                len(sweep.seen),
                sweep.cut,
                self.page_cap(),
                self.max_pages,
            )

    def _take_range(self, sweep: _Sweep) -> tuple[int, int]:
        """The next ``[start, end)`` of the list to read."""
        if sweep.gaps:
            return sweep.gaps.pop()
        start = sweep.next_offset
        sweep.next_offset += self.page_size
        return start, sweep.next_offset

    async def _fetch(self, sweep: _Sweep, offset: int, end: int) -> None:
        """Read one page at ``offset``; what it leaves of ``[offset, end)`` is a gap."""
        try:
            await self._fetch_page(sweep, offset, end)
        finally:
            sweep.in_flight -= 1
            sweep.changed.set()

    async def _fetch_page(self, sweep: _Sweep, offset: int, end: int) -> None:
        discovery = sweep.discovery
        limit = min(self.page_size, end - offset)
        self._counts.lists += 1
        sweep.pages += 1
        sent = trio.current_time()
        try:
            page = await self.rest.list_training_runs(
                limit=limit,
                offset=offset,
                access_scope=discovery.scope if discovery else "owned",
                project_id=discovery.project_id if discovery else None,
            )
        except Exception as exc:
            if _unsupported(exc) and self.unsupported is None:
                self.unsupported = exc
                logger.warning(
                    "the service cannot list runs (%s): polling each run with "
                    "its own request from now on",
                    printable(str(exc)),
                )
            if sweep.error is None:
                sweep.error = exc
            return
        sweep.total = page.total_count
        if 0 < page.limit < min(limit, self.page_size):
            # Capped below what was asked (a gap asks for less than a page).
            self.page_size = page.limit
        # A page the service capped (or the list shrank under it): the rest
        # of the range is read again from where the page ended.
        read = offset + len(page.items)
        if read < min(end, page.total_count) and page.items:
            sweep.gaps.append((read, end))
        if self._answer(page.items, sent, sweep):
            sweep.fresh += 1
        elif offset < page.total_count and sweep.cut is None:
            # The list claims more than it shows: believe the pages.
            sweep.cut = (
                f"the page at offset {offset} listed only runs listed already"
                if page.items
                else f"the page at offset {offset} was empty"
            )

    def _answer(
        self, items: tuple[Mapping[str, Any], ...], sent: float, sweep: _Sweep
    ) -> bool:
        """Hand each listed run to its waiting task, if it was due by ``sent``.

        Returns:
            Whether the page listed a run the sweep had not seen.
        """
        waiting = self._waiting
        on_listed = sweep.discovery.on_listed if sweep.discovery else None
        seen = sweep.seen
        before = len(seen)
        for item in items:
            run_id = item.get("training_run_id")
            if type(run_id) is not str:
                continue
            seen.add(run_id)
            ask = waiting.get(run_id)
            if ask is not None and ask.due <= sent:
                del waiting[run_id]
                sweep.due.discard(run_id)
                trio.lowlevel.reschedule(ask.task, outcome.Value(item))
            elif on_listed is not None:
                on_listed(run_id, item)
        return len(seen) > before
