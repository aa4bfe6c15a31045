"""Chaos: many watched runs, random corruptions, a fifth of all requests faulty.

Invariants checked after every scenario:

- every corrupted run is restored exactly once (the simulator counts the
  ``load_weights`` operations it performed per source run: a duplicate
  restart would cost real GPU time), and reaches ``done``;
- no healthy run is ever restored, detected or handed over;
- the monitor never crashes: every healthy run is still watched at the end
  and ``open_monitor`` exits cleanly;
- ``poll_error`` events are exactly the polls that the injected faults must
  have failed, replaying the client's retry rules over the simulator's log
  (with ``max_retries=0`` for polls: one per faulty poll request).

The loopback scenarios run over real HTTP (hypercorn, real time, real
timeouts); the in-process ones use ``fake.transport()`` and ``MockClock``,
which makes them cheap enough for many seeds.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from trio_tinkex_recovery import Policy, open_monitor
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from ._support import (
    EXACT,
    FAST,
    KEY,
    Recorder,
    chaos_faults,
    expected_poll_errors,
    inject,
    is_poll,
    poll_run_id,
    service_client,
)

if TYPE_CHECKING:
    from trio_tinkex_recovery import Statistics
    from trio_tinkex_recovery._engine._executor import RecoveryState
    from trio_tinkex_recovery.testing import RecordedRequest

#: The share of requests the simulator spoils.
FAULT_RATE = 0.2
SLOW = pytest.mark.slow


@attrs.frozen
class Outcome:
    """What a chaos scenario left behind."""

    healthy: frozenset[str]
    corrupted: frozenset[str]
    restores: dict[str, int]
    requests: list[RecordedRequest]
    stats: Statistics
    recorder: Recorder
    monitored_at_end: frozenset[str]
    states: dict[str, RecoveryState | None]


async def chaos(
    seed: int,
    *,
    runs: int = 50,
    corrupted: int = 10,
    loopback: bool,
    poll_interval: float,
    window: float,
    poll_retries: int,
    budget: float,
) -> Outcome:
    """Watch ``runs`` runs, corrupt ``corrupted`` at seeded times, under faults."""
    rng = random.Random(seed)
    fake = FakeTinker(seed=seed, api_key=KEY)
    ids = [f"chaos-{seed}-{i:03d}" for i in range(runs)]
    for run_id in ids:
        fake.add_run(run_id, checkpoints=["ckpt-0001", "ckpt-0002", "ckpt-0003"])
    bad = rng.sample(ids, corrupted)
    schedule = sorted((rng.uniform(0, window), run_id) for run_id in bad)
    policy = Policy(
        enabled=True,
        poll_interval=poll_interval,
        jitter=0.1,
        max_attempts=100,
        backoff=poll_interval / 4,
        max_backoff=poll_interval,
    )
    # Loopback: a latency fault outlasts this timeout; in process there is none.
    timeout = 1.0 if loopback else None
    client: dict[str, Any] = {"settings": FAST if loopback else EXACT}
    if timeout is not None:
        client["timeout"] = timeout
    async with trio.open_nursery() as server:
        if loopback:
            client["base_url"] = await server.start(serve_fake_tinker, fake)
        else:
            client["fake"] = fake
        async with (
            service_client(max_retries=poll_retries, **client) as poller,
            service_client(max_retries=3, heartbeat_interval=5.0, **client) as restorer,
        ):
            inject(fake, chaos_faults(timeout=timeout), FAULT_RATE)
            recorder = Recorder()
            async with (
                open_monitor(
                    policy=policy,
                    service=restorer,
                    rest=poller.create_rest_client(),
                    max_concurrent=4,
                    # The expected poll errors are counted per GET fault.
                    polling="each",
                ) as monitor,
                trio.open_nursery() as side,
            ):
                await side.start(recorder.run, monitor)
                for run_id in ids:
                    await monitor.monitor_run(run_id)
                start = trio.current_time()

                async def corrupt_on_schedule() -> None:
                    for at, run_id in schedule:
                        await trio.sleep_until(start + at)
                        fake.corrupt(run_id)

                side.start_soon(corrupt_on_schedule)

                def settled(events: list[Any]) -> bool:
                    ended = {
                        e.run_id for e in events if e.name in ("completed", "exhausted")
                    }
                    return ended >= set(bad)

                with trio.fail_after(budget):
                    await recorder.wait_for(settled)
                    await monitor.executor.wait_idle()
                    # Quiesce: no new faults; once every watched run has
                    # finished a poll begun now, every faulty poll has ended.
                    fake.clear_faults()
                    await recorder.wait_all_polled_since(
                        trio.current_time(), lambda: monitor.monitored_runs
                    )
                stats = monitor.statistics()
                monitored = monitor.monitored_runs
                states = {r: monitor.executor.recovery_state(r) for r in ids}
                side.cancel_scope.cancel()
        server.cancel_scope.cancel()
    return Outcome(
        healthy=frozenset(ids) - set(bad),
        corrupted=frozenset(bad),
        restores=fake.restores,
        requests=fake.requests,
        stats=stats,
        recorder=recorder,
        monitored_at_end=monitored,
        states=states,
    )


def check(outcome: Outcome, *, poll_retries: int, timeouts: bool) -> None:
    """The invariants of every chaos scenario (see the module docstring)."""
    faults = sum(r.fault is not None for r in outcome.requests)
    assert faults > 0.1 * len(outcome.requests), "the scenario injected few faults"
    # Exactly one restore per corrupted run, none for anything else.
    assert outcome.restores == dict.fromkeys(outcome.corrupted, 1)
    for run_id in outcome.corrupted:
        state = outcome.states[run_id]
        assert state is not None
        assert state.phase == "done", state
        names = outcome.recorder.names(run_id)
        assert names.count("detected") == 1, names
        assert names.count("completed") == 1, names
        assert "exhausted" not in names
    # Healthy runs: never detected, never handed over, still watched.
    for run_id in outcome.healthy:
        assert outcome.states[run_id] is None
        assert not {"detected", "started"} & set(outcome.recorder.names(run_id))
    assert outcome.healthy <= outcome.monitored_at_end
    # Poll errors: exactly the polls the injected faults must have failed.
    injected = [r for r in outcome.requests if is_poll(r) and r.fault is not None]
    assert injected, "no poll was faulty"
    expected = expected_poll_errors(
        outcome.requests, max_retries=poll_retries, timeouts=timeouts
    )
    if poll_retries == 0:
        late = sum(r.fault == "latency" for r in injected) if not timeouts else 0
        assert expected == len(injected) - late
    assert outcome.stats.poll_errors == outcome.recorder.count("poll_error")
    if not timeouts:
        assert outcome.stats.poll_errors == expected
    else:
        # On the real clock a busy machine can make an unfaulted answer
        # late: the client times it out, as it should, and the retry that
        # timeout spends moves the later faults to other attempts, so the
        # replay cannot count the errors either way.  The faults did fail
        # polls, and no failed poll ever led to a restore (checked above).
        assert outcome.stats.poll_errors > 0
    # Poll errors belong to runs that were polled, and never led to recovery.
    polled = {poll_run_id(r) for r in outcome.requests if is_poll(r)}
    assert {
        e.run_id for e in outcome.recorder.events if e.name == "poll_error"
    } <= polled
    assert outcome.stats.detected == len(outcome.corrupted)
    assert outcome.stats.completed == len(outcome.corrupted)
    assert outcome.stats.exhausted == 0
    assert outcome.stats.dropped_events == 0


#: Seeds run by default; the rest (``-m slow``) run longer.
LOOPBACK_CASES = [
    pytest.param(1, 0, 1.5, id="1-0"),
    pytest.param(2, 3, 1.5, id="2-3"),
    *(
        pytest.param(seed, retries, 8.0, id=f"{seed}-{retries}-long", marks=SLOW)
        for seed in range(3, 11)
        for retries in (0, 3)
    ),
]


@pytest.mark.parametrize(("seed", "poll_retries", "window"), LOOPBACK_CASES)
async def test_loopback_chaos_recovers_each_corrupted_run_exactly_once(
    seed, poll_retries, window
):
    """50 runs over real HTTP with 20 % faults: one restore per corruption."""
    outcome = await chaos(
        seed,
        loopback=True,
        poll_interval=0.25,
        window=window,
        poll_retries=poll_retries,
        # A guard against a hang, not a time budget: every wait is on a
        # condition, and two busy cores may make the real clock run long.
        budget=600 if window < 5 else 1800,
    )
    check(outcome, poll_retries=poll_retries, timeouts=True)


IN_PROCESS_CASES = [
    pytest.param(0, 0, 600.0, id="0-0"),
    pytest.param(1, 2, 600.0, id="1-2"),
    pytest.param(2, 0, 600.0, id="2-0"),
    *(
        pytest.param(seed, retries, 1800.0, id=f"{seed}-{retries}-long", marks=SLOW)
        for seed in range(3, 23)
        for retries in (0, 2)
    ),
]


@pytest.mark.parametrize(("seed", "poll_retries", "window"), IN_PROCESS_CASES)
async def test_in_process_chaos_recovers_each_corrupted_run_exactly_once(
    seed, poll_retries, window, autojump_clock
):
    """The chaos scenario in process, in Trio time, over more seeds."""
    outcome = await chaos(
        seed,
        loopback=False,
        poll_interval=30.0,
        window=window,
        poll_retries=poll_retries,
        budget=3600 if window < 1000 else 36000,
    )
    check(outcome, poll_retries=poll_retries, timeouts=False)
