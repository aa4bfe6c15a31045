"""``watch --all`` and ``--polling``, run as a user runs them."""

from __future__ import annotations

import datetime as dt
import signal

import pytest
import trio

from trio_tinkex_recovery.cli._runtime import UsageError
from trio_tinkex_recovery.cli._watch import AllRuns, parse
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from .test_cli import KEY, TIMEOUT, environ, events_of, spawn, watch_argv


def test_all_options_are_parsed(monkeypatch):
    """--all and its options become AllRuns; --polling is kept."""
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    options = parse(
        ["--all", "--no-state", "--scope", "accessible", "--project", "p-1",
         "--active-within", "600", "--recover-existing", "--polling", "list"]
    )  # fmt: skip
    assert options.all_runs == AllRuns(
        scope="accessible",
        project_id="p-1",
        active_within=600.0,
        recover_existing=True,
    )
    assert options.polling == "list"
    assert options.run_ids == ()
    assert parse(["run-1", "--no-state"]).all_runs is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run-1", "--scope", "owned"], "--scope: only with --all"),
        (["run-1", "--project", "p"], "--project: only with --all"),
        (["run-1", "--active-within", "5"], "--active-within: only with --all"),
        (["run-1", "--recover-existing"], "--recover-existing: only with --all"),
        (["--all", "--active-within", "0"], "--active-within: must be > 0"),
        (["--all", "--active-within", "inf"], "--active-within: must be finite"),
        (["--all", "--project", ""], "--project: must not be empty"),
        (["--no-state"], "or --all"),
    ],
)
def test_bad_all_options_are_usage_errors(argv, message):
    """Options of --all without it, or with bad values, are usage errors."""
    with pytest.raises(UsageError, match=message):
        parse(argv)


async def test_watch_all_finds_new_runs_and_leaves_broken_ones():
    """watch --all watches the active runs and a run created later; a run
    corrupted before it started is reported, not restored."""
    # Runs stamped with the service's clock near now: all active.
    epoch = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    fake = FakeTinker(api_key=KEY, epoch=epoch)
    fake.add_run("run-1")
    fake.add_run("run-2", corrupted=True)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(
                url, "--all", "--no-state", "--json", "-v", "--jitter", "0"
            )
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as watch:
                await watch.err.wait_for(r"already corrupted")
                await watch.err.wait_for(r"run-1: poll #2 ok")
                fake.add_run("run-3")
                await watch.err.wait_for(r"run-3: poll #1 ok")
                fake.corrupt("run-3")
                await watch.out.wait_for(r'"name": "completed"')
                watch.process.send_signal(signal.SIGINT)
                assert await watch.wait() == 0, watch.err.text
            nursery.cancel_scope.cancel()
    events = [e for e in events_of(watch.out.lines) if e["name"] != "polled"]
    assert [(e["name"], e["run_id"]) for e in events][:1] == [("detected", "run-3")]
    assert fake.restore_count("run-3") == 1
    assert fake.restore_count("run-2") == 0
    # Found and polled by pages (the run a recovery creates starts with a GET).
    polled = [e for e in events_of(watch.out.lines) if e["name"] == "polled"]
    assert {e["metadata"]["via"] for e in polled if e["run_id"] == "run-1"} == {"list"}


def test_simulate_list_options():
    """simulate --list-order/--list-page-max configure the simulator's list."""
    from trio_tinkex_recovery.cli._simulate import parse as parse_simulate

    fake = parse_simulate(["--list-order", "shuffled", "--list-page-max", "7"]).fake
    assert (fake.list_order, fake.list_page_max) == ("shuffled", 7)
    assert parse_simulate([]).fake.list_order == "recent"
    with pytest.raises(UsageError, match="--list-page-max"):
        parse_simulate(["--list-page-max", "0"])
    with pytest.raises(UsageError, match="--list-order: invalid choice"):
        parse_simulate(["--list-order", "random"])
