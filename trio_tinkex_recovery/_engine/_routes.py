"""Which REST client polls a run, and which `Batcher` coalesces its polls."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from .._protocols import ListingRestClientProtocol
from ._polling import MAX_LIST_PAGES, Batcher

if TYPE_CHECKING:
    import trio

    from .._protocols import RestClientFactory, RestClientProtocol, ServiceProtocol
    from ._polling import PollCounts, PollingMode
    from ._watch import Watch

__all__ = ["Routes"]


class Routes:
    """The monitor's REST clients and their batchers (one per client)."""

    def __init__(
        self,
        *,
        rest: RestClientProtocol | None,
        rest_for_service: RestClientFactory | None,
        polling: PollingMode,
        interval: float,
        nursery: trio.Nursery,
        counts: PollCounts,
        max_list_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self._rest = rest
        self._rest_for_service = rest_for_service
        self._polling = polling
        self._interval = interval
        self._nursery = nursery
        self._counts = counts
        self._max_list_pages = max_list_pages
        # Per REST client (by identity, kept alive here): its batcher, or
        # None when its runs are polled one GET each.
        self._batchers: dict[int, tuple[RestClientProtocol, Batcher | None]] = {}

    async def rest_client(
        self, run_id: str | None, service: ServiceProtocol | None
    ) -> RestClientProtocol:
        """The REST client that polls ``run_id`` (``None``: lists every run)."""
        if self._rest is not None:
            return self._rest
        if service is None:
            what = "list runs" if run_id is None else f"poll run {run_id!r}"
            raise ValueError(
                f"no service to {what} with: pass service= to "
                "monitor_run() or open_monitor(), or rest= to open_monitor(), "
                "or set TINKER_API_KEY (and TINKER_BASE_URL) for open_monitor() "
                "to connect by itself"
            )
        if self._rest_for_service is None:
            return service.create_rest_client()
        rest = self._rest_for_service(service)
        if inspect.isawaitable(rest):
            rest = await rest
        return rest

    def batcher(
        self, rest: RestClientProtocol, *, discovering: bool = False
    ) -> Batcher | None:
        """The batcher polling ``rest``'s runs; ``None``: a GET per poll.

        ``discovering``: one is needed to list runs, whatever ``polling``.
        """
        known = self._batchers.get(id(rest))
        if known is not None and known[0] is rest:
            batcher = known[1]
        else:
            batcher = None
            if isinstance(rest, ListingRestClientProtocol):
                batcher = Batcher(
                    rest,
                    mode=self._polling,
                    interval=self._interval,
                    nursery=self._nursery,
                    counts=self._counts,
                    max_pages=self._max_list_pages,
                )
            self._batchers[id(rest)] = (rest, batcher)
        if batcher is None or discovering or batcher.mode != "each":
            return batcher
        return None

    def bind(self, watch: Watch, rest: RestClientProtocol) -> None:
        """Poll ``watch``'s run through ``rest`` (and its batcher) from now on."""
        batcher = self.batcher(rest)
        if watch.batcher is not None:
            watch.batcher.members -= 1
        if batcher is not None:
            batcher.members += 1
        watch.rest, watch.batcher = rest, batcher
