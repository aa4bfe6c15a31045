"""Run lists that lie, and discovery options that overflow a date.

A sweep of the run list must not believe the count a list claims: it ends
at the first empty page, at the first page listing no run it had not seen,
and after ⌈watched / 100⌉ + ``max_list_pages`` pages.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter

import pytest
import trio
from prometheus_client import CollectorRegistry

from trio_tinkex_recovery import Policy, TrainingRunPage, open_monitor
from trio_tinkex_recovery.metrics import attach_metrics

from .conftest import ListingFakeRest, drain
from .test_metrics import scrape, value

INTERVAL = 1.0
POLICY = Policy(enabled=True, jitter=0, poll_interval=INTERVAL)
CLAIMED = 1_000_000_000


def recently() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)


class LyingList(ListingFakeRest):
    """Three active runs on a list that claims a billion.

    ``lie="same"``: every offset answers the first page; ``"empty"``: every
    offset past the first answers an empty page.  Each page takes 10 ms.
    """

    def __init__(self, lie: str) -> None:
        super().__init__()
        self.lie = lie
        self.list_delay = 0.01
        for run_id in ("run-0", "run-1", "run-2"):
            self.add(run_id, "0001")
            self.touch(run_id, recently())

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: str = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        page = await super().list_training_runs(
            limit=limit,
            offset=0 if self.lie == "same" else offset,
            access_scope=access_scope,
            project_id=project_id,
        )
        return TrainingRunPage(
            items=page.items, offset=offset, limit=page.limit, total_count=CLAIMED
        )


def lie_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "claims" in r.getMessage()]


@pytest.mark.parametrize("lie", ["same", "empty"])
@pytest.mark.parametrize("polling", ["auto", "list"])
async def test_a_lying_list_costs_a_handful_of_requests_an_interval(
    autojump_clock, caplog, nursery, lie, polling
):
    """A billion claimed, three runs held: at most three list requests per
    interval; every run still polled each interval; the lie logged once and
    counted in statistics() and the metrics."""
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    rest = LyingList(lie)
    async with open_monitor(policy=POLICY, rest=rest, polling=polling) as monitor:
        metrics = await nursery.start(attach_metrics, monitor, CollectorRegistry())
        async with monitor.subscribe(10_000) as events:
            with trio.fail_after(5):
                await monitor.monitor_all()
            assert monitor.monitored_runs == {"run-0", "run-1", "run-2"}
            start = trio.current_time()
            await trio.sleep(6 * INTERVAL)
            stats = monitor.statistics()
            samples = scrape(metrics.registry)
            polled = Counter(e.run_id for e in drain(events, polls=True))
    per_interval = Counter(
        math.floor(t - start) for t, _, _ in rest.pages if t >= start
    )
    assert sorted(per_interval) == list(range(6))
    assert max(per_interval.values()) <= 3, per_interval
    assert stats.list_requests == len(rest.pages) <= 3 * 7
    assert all(polled[run_id] >= 6 for run_id in ("run-0", "run-1", "run-2"))
    assert stats.list_lies >= 6
    assert value(samples, "list_lies_total") == stats.list_lies
    assert len(lie_warnings(caplog)) == 1


class EndlessList(ListingFakeRest):
    """Every page full of runs not listed before, idle for a year: never ends."""

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: str = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        self.pages.append((trio.current_time(), offset, limit))
        await trio.sleep(0.01)
        when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=365)).isoformat()
        items = tuple(
            {"training_run_id": f"ghost-{offset + i}", "last_request_time": when}
            for i in range(limit)
        )
        return TrainingRunPage(
            items=items, offset=offset, limit=limit, total_count=CLAIMED
        )


async def test_a_sweep_reads_at_most_the_page_cap(autojump_clock, caplog):
    """Pages that never run dry: a sweep stops at ⌈watched / 100⌉ +
    max_list_pages pages, and says so once."""
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    rest = EndlessList()
    async with open_monitor(policy=POLICY, rest=rest, max_list_pages=7) as monitor:
        with trio.fail_after(5):
            await monitor.monitor_all()
        assert len(rest.pages) == 7
        await trio.sleep(3 * INTERVAL)
        assert monitor.monitored_runs == frozenset()
        assert monitor.statistics().list_lies == 4
    assert len(rest.pages) == 4 * 7
    [warning] = lie_warnings(caplog)
    assert "at most 7 pages" in warning


@pytest.mark.parametrize("pages", [0, -1, True, 1.5, "10"])
async def test_max_list_pages_is_checked(pages):
    """A page cap that is not a whole number >= 1 is a plain error."""
    with pytest.raises(ValueError, match="max_list_pages"):
        async with open_monitor(policy=POLICY, max_list_pages=pages):
            pass  # pragma: no cover


# -- active_within -----------------------------------------------------------


def fleet_of_two() -> ListingFakeRest:
    """One run active a minute ago, one idle for three years."""
    rest = ListingFakeRest()
    rest.add("fresh", "0001")
    rest.touch("fresh", recently())
    rest.add("old", "0001")
    rest.touch("old", dt.datetime.now(dt.UTC) - dt.timedelta(days=3 * 365))
    return rest


@pytest.mark.parametrize(
    "span",
    [math.inf, 1e12, 1e300, 86400 * 10**7, pytest.param(10**400, id="10**400")],
)
async def test_a_span_too_large_for_a_date_watches_every_run(autojump_clock, span):
    """A span reaching back before year 1 means no limit, as math.inf does."""
    rest = fleet_of_two()
    async with open_monitor(policy=POLICY, rest=rest) as monitor:
        await monitor.monitor_all(active_within=span)
        assert monitor.monitored_runs == {"fresh", "old"}


async def test_a_list_of_idle_runs_says_none_is_watched_once(autojump_clock, caplog):
    """Every listed run idle: the log says so once, not every sweep."""
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    rest = fleet_of_two()
    del rest.runs["fresh"]
    async with open_monitor(policy=POLICY, rest=rest) as monitor:
        await monitor.monitor_all(active_within=3600)
        await trio.sleep(5 * INTERVAL)
        assert monitor.monitored_runs == frozenset()
    said = [r for r in caplog.records if "none is watched" in r.getMessage()]
    assert len(said) == 1
    assert "1 run(s)" in said[0].getMessage()
    assert "active_within=3600" in said[0].getMessage()


async def test_a_list_with_an_active_run_says_nothing(autojump_clock, caplog):
    """One run watched: nothing to say."""
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    async with open_monitor(policy=POLICY, rest=fleet_of_two()) as monitor:
        await monitor.monitor_all(active_within=3600)
        assert monitor.monitored_runs == {"fresh"}
    assert not [r for r in caplog.records if "none is watched" in r.getMessage()]
