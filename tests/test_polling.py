"""Coalesced polling: runs falling due together are answered by list pages."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections import defaultdict

import attrs
import pytest
import trio

from trio_tinkex_recovery import (
    InternalServerError,
    NotFoundError,
    Policy,
    TrainingRunPage,
    open_monitor,
)
from trio_tinkex_recovery._types import list_params

from .conftest import FakeService, ListingFakeRest, drain

ENABLED = Policy(enabled=True, jitter=0)
INTERVAL = ENABLED.poll_interval


def listing(count: int, **options) -> ListingFakeRest:
    """A listing REST client holding ``run-000``, ``run-001``, ..."""
    rest = ListingFakeRest(**options)
    for index in range(count):
        rest.add(f"run-{index:03d}", "0001", "0002")
    return rest


def poll_times(events) -> dict[str, list[float]]:
    """When each run's polls (``polled`` and ``poll_error``) ended."""
    times = defaultdict(list)
    for event in events:
        if event.name in ("polled", "poll_error"):
            times[event.run_id].append(event.time)
    return times


def page_times(rest: ListingFakeRest) -> list[float]:
    return [t for t, _, _ in rest.pages]


async def test_runs_due_together_are_answered_by_pages(autojump_clock):
    """250 runs on one schedule cost three pages an interval and no GET."""
    rest = listing(250)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe(100_000) as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(INTERVAL - 1)
            drain(events, polls=True)  # The first polls, at once.
            gets, pages = len(rest.polls), len(rest.pages)
            await trio.sleep(3 * INTERVAL)
            seen = drain(events, polls=True)
            stats = monitor.statistics()
    assert len(rest.polls) == gets
    assert page_times(rest)[pages:] == [30.0] * 3 + [60.0] * 3 + [90.0] * 3
    assert {e.metadata["via"] for e in seen} == {"list"}
    assert all(times == [30, 60, 90] for times in poll_times(seen).values())
    assert len(poll_times(seen)) == 250
    assert (stats.list_requests, stats.get_requests) == (len(rest.pages), gets)
    assert stats.polls == stats.polled == 250 + 3 * 250


async def test_runs_added_over_time_join_one_schedule(autojump_clock):
    """Runs added over an interval are polled at once, then together, never
    later than their own schedule."""
    rest = listing(100)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe(100_000) as events:
            for index, run_id in enumerate(list(rest.runs)):
                await trio.sleep_until(index * 0.3)
                await monitor.monitor_run(run_id)
            await trio.sleep_until(95)
            seen = drain(events, polls=True)
    for index, run_id in enumerate(rest.runs):
        times = poll_times(seen)[run_id]
        assert times == [pytest.approx(index * 0.3), 30, 60, 90]
        assert all(b - a <= INTERVAL for a, b in itertools.pairwise(times))
    # The first polls were GETs; then one page an interval answered all.
    assert len(rest.polls) == 100
    assert page_times(rest) == [30.0, 60.0, 90.0]


async def test_shuffled_pages_lose_no_run(autojump_clock):
    """A new order on every page: runs no page showed get a GET, same cycle."""
    rest = listing(250, shuffled=True)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe(100_000) as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(INTERVAL - 1)
            drain(events, polls=True)
            gets = len(rest.polls)
            await trio.sleep(3 * INTERVAL)
            seen = drain(events, polls=True)
    assert len(poll_times(seen)) == 250
    assert all(times == [30, 60, 90] for times in poll_times(seen).values())
    vias = {e.metadata["via"] for e in seen}
    assert vias == {"list", "get"}
    assert {t for t, _ in rest.polls[gets:]} == {30, 60, 90}
    assert page_times(rest)[-3:] == [90.0] * 3


async def test_capped_pages_are_read_to_the_end(autojump_clock):
    """A service that pages by 30 when asked for 100: every run still found."""
    rest = listing(100, page_max=30)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe(100_000) as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(INTERVAL - 1)
            gets, pages = len(rest.polls), len(rest.pages)
            drain(events, polls=True)
            await trio.sleep(2 * INTERVAL)
            seen = drain(events, polls=True)
    assert len(rest.polls) == gets, (rest.polls[gets:], rest.pages)
    assert {e.metadata["via"] for e in seen} == {"list"}
    assert len(poll_times(seen)) == 100
    assert sorted(offset for _, offset, _ in rest.pages[pages:]) == [
        0, 0, 30, 30, 60, 60, 90, 90
    ]  # fmt: skip


async def test_corrupted_in_a_page_is_detected_and_recovered(autojump_clock):
    """A page's corrupted: true is detected and restored exactly as a GET's."""
    rest = listing(3)
    service = FakeService(rest)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(10)
            rest.corrupt("run-001")
            await trio.sleep(INTERVAL)
            seen = drain(events, polls=True)
    [polled] = [
        e for e in seen if (e.name, e.run_id, e.time) == ("polled", "run-001", 30)
    ]
    assert polled.metadata["via"] == "list"
    assert polled.metadata["corrupted"] is True
    assert polled.metadata["checkpoint"] == "tinker://run-001/weights/0002"
    [detected] = [e for e in seen if e.name == "detected"]
    assert (detected.run_id, detected.time) == ("run-001", 30)
    assert "completed" in [e.name for e in seen]
    assert service.calls == [(30, "tinker://run-001/weights/0002", True)]
    assert ("run-001", 30) not in [(r, t) for t, r in rest.polls]


async def test_failed_page_is_a_poll_error_never_a_recovery(autojump_clock):
    """A page that fails: a poll_error for the runs it was to answer."""
    rest = listing(3)
    service = FakeService(rest)
    rest.corrupt("run-002")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            for run_id in ("run-000", "run-001"):
                await monitor.monitor_run(run_id)
            await trio.sleep(10)
            rest.fail_lists.append(InternalServerError("down", status=503))
            await monitor.monitor_run("run-002")  # Its first poll: a GET.
            drain(events, polls=True)
            await trio.sleep(INTERVAL)
            seen = drain(events, polls=True)
    # run-002 was restored at 10 from its first poll; its successor is
    # watched too.  At 30 the page fails: nothing more is restored.
    assert [t for t, _, _ in service.calls] == [10]
    successor = service.rest.runs.keys() - {"run-000", "run-001", "run-002"}
    at_30 = [e for e in seen if e.time == 30]
    assert {(e.name, e.run_id) for e in at_30} == {
        ("poll_error", run_id) for run_id in {"run-000", "run-001", *successor}
    }
    assert all(isinstance(e.metadata["error"], InternalServerError) for e in at_30)


async def test_bad_entry_is_a_poll_error_for_its_run_only(autojump_clock):
    """A listed run whose corrupted flag is no bool: that run's poll fails."""
    rest = listing(3)
    rest.patches["run-001"] = {"corrupted": "yes"}
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe() as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(INTERVAL - 1)
            drain(events, polls=True)
            await trio.sleep(2)
            seen = drain(events, polls=True)
        assert monitor.statistics().detected == 0
    assert sorted((e.name, e.run_id) for e in seen) == [
        ("poll_error", "run-001"),
        ("polled", "run-000"),
        ("polled", "run-002"),
    ]
    [error] = [e for e in seen if e.name == "poll_error"]
    assert "corrupted" in str(error.metadata["error"])


async def test_missing_list_endpoint_falls_back_to_gets(autojump_clock, caplog):
    """A 404 for the list: each run gets its own GET from then on, logged once."""
    rest = listing(3)
    rest.fail_lists.append(NotFoundError("no such endpoint", status=404))
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe() as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(INTERVAL - 1)
            drain(events, polls=True)
            await trio.sleep(3 * INTERVAL)
            seen = drain(events, polls=True)
        stats = monitor.statistics()
    assert [e.name for e in seen] == ["polled"] * 9
    assert {e.metadata["via"] for e in seen} == {"get"}
    assert stats.poll_errors == 0
    assert len(rest.pages) == 1
    assert [t for t, r in rest.polls if r == "run-000"] == [0, 30, 60, 90]
    warnings = [r for r in caplog.records if "cannot list runs" in r.getMessage()]
    assert len(warnings) == 1


async def test_stop_monitoring_during_a_sweep(autojump_clock):
    """A run stopped while its page is on the way: nothing more about it."""
    rest = listing(3)
    rest.list_delay = 1.0
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe() as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep_until(INTERVAL + 0.5)  # The sweep of t = 30 is out.
            drain(events, polls=True)
            monitor.stop_monitoring("run-001")
            await trio.sleep(3 * INTERVAL)
            seen = drain(events, polls=True)
            assert monitor.monitored_runs == {"run-000", "run-002"}
    assert "run-001" not in {e.run_id for e in seen}
    assert poll_times(seen)["run-000"][0] == INTERVAL + 1


async def test_auto_polls_each_when_pages_outnumber_the_runs(autojump_clock):
    """Three runs at the end of a 500-run list: one page learns that, then GETs."""
    rest = listing(500)
    watched = list(rest.runs)[-3:]
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe() as events:
            for run_id in watched:
                await monitor.monitor_run(run_id)
            await trio.sleep(4 * INTERVAL + 1)
            seen = drain(events, polls=True)
        stats = monitor.statistics()
    assert len(rest.pages) == stats.list_requests <= 1
    assert stats.get_requests == len(rest.polls) == 3 * 5
    assert all(times == [0, 30, 60, 90, 120] for times in poll_times(seen).values())


async def test_list_mode_always_sweeps(autojump_clock):
    """polling='list' reads pages even when GETs would be fewer."""
    rest = listing(500)
    watched = list(rest.runs)[-3:]
    async with open_monitor(policy=ENABLED, rest=rest, polling="list") as monitor:
        async with monitor.subscribe() as events:
            for run_id in watched:
                await monitor.monitor_run(run_id)
            await trio.sleep(INTERVAL - 1)
            drain(events, polls=True)
            pages = len(rest.pages)
            await trio.sleep(2)
            seen = drain(events, polls=True)
    assert {e.metadata["via"] for e in seen} == {"list"}
    assert len(rest.pages) - pages == 5


async def test_each_mode_never_lists(autojump_clock):
    """polling='each': one GET per poll, no page."""
    rest = listing(5)
    async with open_monitor(policy=ENABLED, rest=rest, polling="each") as monitor:
        for run_id in list(rest.runs):
            await monitor.monitor_run(run_id)
        await trio.sleep(INTERVAL + 1)
        stats = monitor.statistics()
    assert rest.pages == []
    assert (stats.get_requests, stats.list_requests) == (10, 0)


@pytest.mark.parametrize("polling", ["all", "", None, "EACH"])
async def test_unknown_polling_mode_is_refused(polling):
    """polling must be auto, list or each."""
    with pytest.raises(ValueError, match="polling must be"):
        async with open_monitor(policy=ENABLED, rest=listing(1), polling=polling):
            pass


async def test_jittered_first_polls_coalesce(autojump_clock):
    """With jitter, runs added within the window share their first poll."""
    rest = listing(50)
    policy = Policy(enabled=True, jitter=0.1)
    async with open_monitor(policy=policy, rest=rest) as monitor:
        async with monitor.subscribe() as events:
            for run_id in list(rest.runs):
                await monitor.monitor_run(run_id)
            await trio.sleep(2 * INTERVAL)
            seen = drain(events, polls=True)
    firsts = {times[0] for times in poll_times(seen).values()}
    assert len(firsts) == 1
    assert 0 <= firsts.pop() <= 0.1 * INTERVAL
    assert rest.polls == []


def test_page_shape_is_checked():
    """A page without a list of objects or a full cursor is refused."""
    from trio_tinkex_recovery import ResponseValidationError

    good = {
        "training_runs": [{"training_run_id": "a"}],
        "cursor": {"offset": 0, "limit": 100, "total_count": 1},
    }
    page = TrainingRunPage.from_json(good)
    assert (page.offset, page.limit, page.total_count) == (0, 100, 1)
    for bad, field in [
        ([], "JSON object"),
        ({**good, "training_runs": None}, "training_runs"),
        ({**good, "training_runs": [1]}, r"training_runs\[0\]"),
        ({**good, "cursor": None}, "cursor"),
        ({**good, "cursor": {"offset": 0, "limit": 1}}, "total_count"),
        ({**good, "cursor": {"offset": -1, "limit": 1, "total_count": 1}}, "offset"),
    ]:
        with pytest.raises(ResponseValidationError, match=field):
            TrainingRunPage.from_json(bad)
    with pytest.raises(ResponseValidationError, match=r"training_runs\[0\]"):
        page.training_runs()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"limit": 0}, ValueError),
        ({"limit": True}, TypeError),
        ({"offset": -1}, ValueError),
        ({"access_scope": "mine"}, ValueError),
        ({"project_id": ""}, ValueError),
        ({"project_id": 3}, TypeError),
    ],
)
def test_list_options_are_checked(options, error):
    """Bad list options are refused before anything is sent."""
    query = {"limit": 100, "offset": 0, "access_scope": "owned", "project_id": None}
    with pytest.raises(error):
        list_params(**{**query, **options})


# -- monitor_all -------------------------------------------------------------


def now_minus(seconds: float) -> dt.datetime:
    """The wall clock ``seconds`` ago: listed runs are active by it."""
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


def fleet(active: int, idle: int = 0) -> ListingFakeRest:
    """``active`` runs that handled a request a minute ago, ``idle`` ones
    that did three days ago."""
    rest = ListingFakeRest()
    for index in range(active + idle):
        run_id = f"run-{index:03d}" if index < active else f"idle-{index:03d}"
        rest.add(run_id, "0001")
        rest.touch(run_id, now_minus(60 if index < active else 3 * 86400))
    return rest


async def test_monitor_all_watches_active_runs_and_new_ones(autojump_clock):
    """Active runs are watched at once, idle ones not, new ones as they appear."""
    rest = fleet(active=3, idle=2)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_all()
            assert monitor.monitored_runs == {"run-000", "run-001", "run-002"}
            await trio.sleep(10)
            rest.add("new-1", "0001")
            rest.touch("new-1", now_minus(0))
            await trio.sleep(INTERVAL)
            assert "new-1" in monitor.monitored_runs
            rest.touch("idle-003", now_minus(0))  # It trains again.
            await trio.sleep(INTERVAL)
            assert monitor.monitored_runs == {
                "run-000", "run-001", "run-002", "new-1", "idle-003"
            }  # fmt: skip
            seen = drain(events, polls=True)
    # Each run's first poll is the page that found it: no GET at all.
    assert rest.polls == []
    times = poll_times(seen)
    assert times["run-000"] == [0, 30, 60]
    assert times["new-1"] == [30, 60]
    assert times["idle-003"] == [60]
    assert page_times(rest) == [0, 30, 60]
    assert {scope for scope in rest.scopes} == {("owned", None)}


async def test_monitor_all_lists_every_interval_even_with_nothing_watched(
    autojump_clock,
):
    """An empty list is listed again each interval; a run created later is found."""
    rest = fleet(active=0)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        await monitor.monitor_all(scope="accessible", project_id="p-1")
        await trio.sleep(40)
        rest.add("late", "0001")
        rest.touch("late", now_minus(0))
        await trio.sleep(25)
        assert monitor.monitored_runs == {"late"}
    assert page_times(rest) == [0, 30, 60]
    assert set(rest.scopes) == {("accessible", "p-1")}


async def test_already_corrupted_run_is_reported_not_restored(autojump_clock, caplog):
    """A run broken before discovery is watched and counted, never restored;
    once healthy again, its next corruption is restored."""
    rest = fleet(active=2)
    rest.corrupt("run-001")
    service = FakeService(rest)
    caplog.set_level(logging.WARNING, logger="trio_tinkex_recovery")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_all()
            await trio.sleep(2 * INTERVAL + 1)
            seen = drain(events)
            stats = monitor.statistics()
            assert stats.existing_corrupted == 1
            assert (stats.detected, stats.attempts) == (0, 0)
            assert "run-001" in monitor.monitored_runs
            rest.runs["run-001"] = attrs.evolve(rest.runs["run-001"], corrupted=False)
            await trio.sleep(INTERVAL)
            rest.corrupt("run-001")
            await trio.sleep(INTERVAL)
            assert monitor.statistics().detected == 1
    assert seen == []
    assert service.calls == [(120, "tinker://run-001/weights/0001", True)]
    assert any("already corrupted" in r.getMessage() for r in caplog.records)


async def test_recover_existing_restores_runs_found_broken(autojump_clock):
    """recover_existing=True restores a run found corrupted, at once."""
    rest = fleet(active=2)
    rest.corrupt("run-001")
    service = FakeService(rest)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_all(recover_existing=True)
        await trio.sleep(1)
        stats = monitor.statistics()
    assert (stats.existing_corrupted, stats.detected, stats.completed) == (0, 1, 1)
    assert service.calls == [(0, "tinker://run-001/weights/0001", True)]


async def test_stopped_run_is_not_discovered_again(autojump_clock):
    """stop_monitoring holds under monitor_all; monitor_run watches it again."""
    rest = fleet(active=2)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        await monitor.monitor_all()
        monitor.stop_monitoring("run-000")
        await trio.sleep(2 * INTERVAL)
        assert monitor.monitored_runs == {"run-001"}
        await monitor.monitor_run("run-000")
        assert monitor.monitored_runs == {"run-000", "run-001"}


async def test_monitor_all_needs_a_listing_client():
    """A REST client that cannot list runs is refused; nothing is watched."""
    async with open_monitor(policy=ENABLED, service=FakeService()) as monitor:
        with pytest.raises(TypeError, match="list_training_runs"):
            await monitor.monitor_all()
        assert monitor.monitored_runs == frozenset()


async def test_monitor_all_without_list_endpoint_raises(autojump_clock):
    """A 404 from the list: monitor_all raises it and watches nothing."""
    rest = fleet(active=2)
    rest.fail_lists.append(NotFoundError("no such endpoint", status=404))
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        with pytest.raises(NotFoundError):
            await monitor.monitor_all()
        assert monitor.monitored_runs == frozenset()
        with pytest.raises(NotFoundError):
            await monitor.monitor_all()
        await trio.sleep(2 * INTERVAL)
    assert len(rest.pages) == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"scope": "mine"}, ValueError),
        ({"project_id": ""}, ValueError),
        ({"active_within": 0}, ValueError),
        ({"active_within": True}, ValueError),
        ({"recover_existing": 1}, TypeError),
    ],
)
async def test_monitor_all_options_are_checked(options, error):
    """Bad options are refused before anything is listed."""
    rest = fleet(active=1)
    async with open_monitor(policy=ENABLED, rest=rest) as monitor:
        with pytest.raises(error):
            await monitor.monitor_all(**options)
    assert rest.pages == []


async def test_monitor_all_refuses_a_disabled_policy():
    """Recovery is opt-in for discovered runs too."""
    from trio_tinkex_recovery import RecoveryDisabledError

    async with open_monitor(rest=fleet(active=1)) as monitor:
        with pytest.raises(RecoveryDisabledError):
            await monitor.monitor_all()


async def test_monitor_all_with_each_polling(autojump_clock):
    """polling='each': pages discover runs, GETs poll them."""
    rest = fleet(active=2)
    async with open_monitor(policy=ENABLED, rest=rest, polling="each") as monitor:
        await monitor.monitor_all()
        await trio.sleep(INTERVAL + 1)
    assert page_times(rest) == [0, 30]
    assert sorted(rest.polls) == [(30, "run-000"), (30, "run-001")]
