"""The monitor: scheduling, detection, hand-off, stop paths."""

from __future__ import annotations

import itertools

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_tinkex_recovery import (
    Policy,
    RecoveryDisabledError,
    ResponseValidationError,
    open_executor,
    open_monitor,
)

from .conftest import FakeRest, FakeService, drain

ENABLED = Policy(enabled=True, jitter=0)


async def collect_until(events, name, count=1):
    """Receive events (``polled`` left out) until ``count`` called ``name`` arrived."""
    seen = []
    async for event in events:
        if event.name == "polled" and name != "polled":
            continue
        seen.append(event)
        if sum(e.name == name for e in seen) == count:
            return seen
    raise AssertionError(f"channel closed before {name}: {seen}")


async def test_corrupted_run_is_detected_and_recovered(service, rest, autojump_clock):
    """The reference case: a corrupted run restarts from its checkpoint, once."""
    rest.add("run-1", "0001", corrupted=True)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            seen = await collect_until(events, "completed")
        assert [e.name for e in seen] == [
            "detected",
            "started",
            "checkpoint_selected",
            "client_created",
            "completed",
        ]
        assert service.calls == [(0.0, "tinker://run-1/weights/0001", True)]
        assert "run-1" not in monitor.monitored_runs
        polls_before = len(rest.poll_times("run-1"))
        await trio.sleep(10 * ENABLED.poll_interval)
        assert len(rest.poll_times("run-1")) == polls_before == 1
        assert service.calls == [(0.0, "tinker://run-1/weights/0001", True)]
        stats = monitor.statistics()
        assert (stats.detected, stats.attempts, stats.completed) == (1, 1, 1)


async def test_healthy_run_is_kept_and_never_recovered(service, rest, autojump_clock):
    """A healthy run is polled on schedule and never restarted."""
    rest.add("run-1", "0001")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(95)
        assert monitor.monitored_runs == {"run-1"}
    assert rest.poll_times("run-1") == [0, 30, 60, 90]
    assert service.calls == []


async def test_disabled_policy_refuses(service, rest):
    """Recovery is opt-in: monitor_run refuses and schedules nothing."""
    rest.add("run-1", "0001", corrupted=True)
    async with open_monitor(service=service) as monitor:
        with pytest.raises(RecoveryDisabledError, match="Policy\\(enabled=True\\)"):
            await monitor.monitor_run("run-1")
        assert monitor.monitored_runs == frozenset()
    assert rest.polls == []


async def test_config_recovery_is_the_default_policy(service, rest, autojump_clock):
    """Without policy=, the monitor uses config.recovery."""
    from trio_tinkex_recovery import Config

    config = Config(api_key="tml-test", recovery=ENABLED)
    rest.add("run-1", "0001")
    async with open_monitor(config=config, service=service) as monitor:
        await monitor.monitor_run("run-1")
        assert monitor.policy is ENABLED


@pytest.mark.parametrize("run_id", ["", "../x", "a/b", "a?b", "a#b", "a b", "é", "."])
async def test_bad_run_id_rejected_before_any_request(service, rest, run_id):
    """A run id that could address something else is refused, nothing sent."""
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        with pytest.raises(ValueError, match="run_id"):
            await monitor.monitor_run(run_id)
        assert monitor.monitored_runs == frozenset()
    assert rest.polls == []


async def test_rest_for_service_error_propagates(service):
    """A failing rest_for_service raises from monitor_run; nothing scheduled."""

    def broken(_service):
        raise RuntimeError("no rest client today")

    async with open_monitor(
        policy=ENABLED, service=service, rest_for_service=broken
    ) as monitor:
        with pytest.raises(RuntimeError, match="no rest client today"):
            await monitor.monitor_run("run-1")
        assert monitor.monitored_runs == frozenset()


async def test_async_rest_for_service_is_awaited(service, autojump_clock):
    """rest_for_service may be async; its client polls the run."""
    other = FakeRest()
    other.add("run-1", "0001")

    async def factory(_service):
        await trio.lowlevel.checkpoint()
        return other

    async with open_monitor(
        policy=ENABLED, service=service, rest_for_service=factory
    ) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
    assert other.poll_times("run-1") == [0]
    assert service.rest.polls == []


async def test_no_service_at_all_is_a_clear_error():
    """Without service or rest there is nothing to poll with."""
    async with open_monitor(policy=ENABLED) as monitor:
        with pytest.raises(ValueError, match="no service to poll run 'run-1'"):
            await monitor.monitor_run("run-1")


async def test_monitoring_again_updates_in_place(service, rest, autojump_clock):
    """A second monitor_run updates service and metadata; still one task."""
    rest.add("run-1", "0001")
    second = FakeService(rest)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1", metadata={"who": "first"})
            await trio.sleep(15)
            await monitor.monitor_run(
                "run-1", service=second, metadata={"who": "second"}
            )
            await trio.sleep(20)
            rest.corrupt("run-1")
            seen = await collect_until(events, "completed")
    assert rest.poll_times("run-1") == [0, 30, 60]
    assert seen[0].metadata["who"] == "second"
    assert service.calls == []
    assert [path for _, path, _ in second.calls] == ["tinker://run-1/weights/0001"]


async def test_polls_are_drift_free(service, rest, autojump_clock):
    """Slow polls do not shift the schedule: 0, I, 2I, ... in Trio time."""
    rest.add("run-1", "0001")
    rest.poll_delay = 7
    async with open_monitor(
        policy=Policy(enabled=True, jitter=0, poll_interval=10), service=service
    ) as monitor:
        await trio.sleep(5)
        await monitor.monitor_run("run-1")
        await trio.sleep(41)
    assert rest.poll_times("run-1") == [5, 15, 25, 35, 45]


async def test_poll_longer_than_interval_skips_missed_slots(
    service, rest, autojump_clock
):
    """A poll that overruns its slot does not cause a burst of catch-up polls."""
    rest.add("run-1", "0001")
    rest.poll_delay = 25
    async with open_monitor(
        policy=Policy(enabled=True, jitter=0, poll_interval=10), service=service
    ) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(65)
    assert rest.poll_times("run-1") == [0, 30, 60]


async def test_jittered_polls_stay_within_bounds(service, rest, autojump_clock):
    """With jitter j, poll k starts in [kI, kI + jI] and gaps stay in I(1±j)."""
    rest.add("run-1", "0001")
    policy = Policy(enabled=True, jitter=0.2, poll_interval=10)
    async with open_monitor(policy=policy, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1000)
    times = rest.poll_times("run-1")
    assert len(times) == 100
    for k, t in enumerate(times):
        assert k * 10 <= t <= k * 10 + 2
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(8 <= g <= 12 for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 1  # it is really jittered


async def test_poll_errors_never_trigger_recovery(service, rest, autojump_clock):
    """Failed polls emit poll_error and keep watching; no recovery starts."""
    rest.add("run-1", "0001")
    rest.fail_polls["run-1"] = [
        RuntimeError("boom"),
        ResponseValidationError("malformed TrainingRun: $.base_model missing"),
        ExceptionGroup("cattrs", [KeyError("x")]),
    ]
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe():
            await monitor.monitor_run("run-1")
            await trio.sleep(95)
        assert monitor.monitored_runs == {"run-1"}
        stats = monitor.statistics()
    assert (stats.polls, stats.poll_errors, stats.detected) == (4, 3, 0)
    assert service.calls == []


async def test_poll_error_events_carry_the_error(service, rest, autojump_clock):
    """A poll_error event names the run and carries the exception."""
    rest.add("run-1", "0001")
    boom = RuntimeError("boom")
    rest.fail_polls["run-1"] = [boom]
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1", metadata={"team": "a"})
            event = await events.receive()
    assert event.name == "poll_error"
    assert event.event == ("tinkex", "recovery", "poll_error")
    assert event.run_id == "run-1"
    assert event.metadata["error"] is boom
    assert event.metadata["team"] == "a"


async def test_run_pending_elsewhere_is_detected_once(service, rest, autojump_clock):
    """A run the executor already has pending is detected once, never restored twice."""
    rest.add("run-1", "0001", corrupted=True)
    service.delay = 100  # the first recovery takes a while
    async with open_executor(service=service) as executor:
        await executor.recover(
            "run-1", service, ENABLED, last_checkpoint="tinker://run-1/weights/0001"
        )
        async with open_monitor(
            policy=ENABLED, service=service, executor=executor
        ) as monitor:
            await monitor.monitor_run("run-1")
            await trio.sleep(65)
            assert monitor.monitored_runs == frozenset()
            assert rest.poll_times("run-1") == [0]
            assert monitor.statistics().detected == 1
            await trio.sleep(100)
            # Its outcome is followed all the same.
            assert monitor.monitored_runs == {"session-1:train:1"}
    assert len(service.calls) == 1


async def test_follow_recovered_watches_the_new_run(service, rest, autojump_clock):
    """After a recovery the new run (the client's model_id) is watched."""
    rest.add("run-1", "0001", corrupted=True)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1", metadata={"training_client": "old"})
            await collect_until(events, "completed")
        await trio.lowlevel.checkpoint()
        assert monitor.monitored_runs == {"session-1:train:1"}
        await trio.sleep(31)
    assert rest.poll_times("session-1:train:1") == [0, 30]


async def test_follow_recovered_off(service, rest, autojump_clock):
    """follow_recovered=False leaves the new run alone."""
    rest.add("run-1", "0001", corrupted=True)
    policy = Policy(enabled=True, jitter=0, follow_recovered=False)
    async with open_monitor(policy=policy, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(100)
        assert monitor.monitored_runs == frozenset()
    assert rest.poll_times("session-1:train:1") == []


async def test_a_second_corruption_of_the_followed_run_is_recovered(
    service, rest, autojump_clock
):
    """The followed run is recovered too, with the previous client as 'old'."""
    rest.add("run-1", "0001", corrupted=True)
    olds = []
    policy = Policy(
        enabled=True, jitter=0, on_recovery=lambda old, new, ckpt: olds.append(old)
    )
    async with open_monitor(policy=policy, service=service) as monitor:
        await monitor.monitor_run("run-1", metadata={"training_client": "original"})
        await trio.sleep(1)
        rest.corrupt("session-1:train:1")
        await trio.sleep(30)
        assert monitor.monitored_runs == {"session-1:train:2"}
    assert olds[0] == "original"
    assert olds[1].model_id == "session-1:train:1"


# -- stop paths ------------------------------------------------------------


async def test_stop_monitoring_during_an_in_flight_poll(service, rest, autojump_clock):
    """After stop_monitoring returns, no event about that run follows."""
    rest.add("run-1", "0001", corrupted=True)
    rest.poll_delay = 5
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            await trio.sleep(2)  # the first poll is in flight
            assert len(rest.polls) == 1
            monitor.stop_monitoring("run-1")
            assert monitor.monitored_runs == frozenset()
            await trio.sleep(100)
            assert drain(events) == []
    assert len(rest.polls) == 1
    assert service.calls == []


async def test_stop_when_the_poll_already_returned(service, rest, autojump_clock):
    """A poll whose answer arrived before the stop is not acted upon."""
    rest.add("run-1", "0001", corrupted=True)
    answer = rest.get_training_run
    async with open_monitor(policy=ENABLED, service=service) as monitor:

        async def answer_then_stop(run_id):
            run = await answer(run_id)
            # The corrupted answer is in; the stop lands before the monitor
            # reads it (no checkpoint between here and there).
            monitor.stop_monitoring(run_id)
            return run

        rest.get_training_run = answer_then_stop
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            await trio.sleep(100)
            assert drain(events, polls=True) == []
            assert monitor.monitored_runs == frozenset()
    assert rest.poll_times("run-1") == [0]  # the poll did happen and return
    assert service.calls == []


async def test_stop_monitoring_unknown_run_is_ignored(service, rest, autojump_clock):
    """Stopping a run that is not watched does nothing: no error, and the
    runs that are watched go on being polled."""
    rest.add("run-1", "0001")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        monitor.stop_monitoring("never-watched")
        assert monitor.monitored_runs == {"run-1"}
        await trio.sleep(31)
        assert monitor.monitored_runs == {"run-1"}
    assert rest.poll_times("run-1") == [0, 30]
    assert rest.poll_times("never-watched") == []


async def test_stopped_run_can_be_watched_again(service, rest, autojump_clock):
    """stop then monitor_run starts a fresh schedule."""
    rest.add("run-1", "0001")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(40)
        monitor.stop_monitoring("run-1")
        await trio.sleep(5)
        await monitor.monitor_run("run-1")
        await trio.sleep(31)
    assert rest.poll_times("run-1") == [0, 30, 45, 75]


def count_tasks(task=None):
    """How many tasks run under ``task`` (default: the whole run), itself included."""
    task = task or trio.lowlevel.current_root_task()
    return 1 + sum(
        count_tasks(child)
        for nursery in task.child_nurseries
        for child in nursery.child_tasks
    )


async def test_leaving_the_block_ends_polls_and_attempts(service, rest, autojump_clock):
    """Leaving open_monitor with polls and attempts in flight ends everything."""
    rest.add("run-1", "0001", corrupted=True)
    rest.add("run-2", "0001")
    rest.poll_delay = 1000  # run-2's poll is in flight too
    service.delay = 1000
    before = count_tasks()
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        rest.poll_delay = 0
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        rest.poll_delay = 1000
        await monitor.monitor_run("run-2")
        await trio.sleep(1)
        assert monitor.statistics().in_progress == 1
        assert count_tasks() > before
        executor = monitor.executor
    assert count_tasks() == before
    assert executor.recovery_state("run-1").phase == "interrupted"
    assert executor.statistics().in_progress == 0
    assert executor.statistics().interrupted == 1
    assert executor.statistics().exhausted == 0


async def test_crashing_callback_does_not_stop_the_monitor(
    service, rest, autojump_clock, caplog
):
    """on_recovery raising is logged; the monitor goes on polling."""
    rest.add("run-1", "0001", corrupted=True)
    rest.add("run-2", "0001")

    def explode(old, new, checkpoint):
        raise RuntimeError("callback bug")

    policy = Policy(enabled=True, jitter=0, on_recovery=explode)
    async with open_monitor(policy=policy, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await monitor.monitor_run("run-2")
        await trio.sleep(61)
        assert "run-2" in monitor.monitored_runs
        assert monitor.statistics().completed == 1
    assert rest.poll_times("run-2") == [0, 30, 60]
    assert "on_recovery callback raised" in caplog.text


async def test_monitor_run_checkpoints():
    """monitor_run is a checkpoint even when it refuses."""
    async with open_monitor() as monitor:
        with trio.testing.assert_checkpoints(), pytest.raises(RecoveryDisabledError):
            await monitor.monitor_run("run-1")


async def test_no_public_constructor():
    """Monitor is made by open_monitor only."""
    from trio_tinkex_recovery import Monitor

    with pytest.raises(TypeError, match="open_monitor"):
        Monitor()  # type: ignore[call-arg]


async def test_every_poll_is_an_event(service, rest, autojump_clock):
    """Each poll emits polled with the corrupted flag, checkpoint and duration."""
    rest.add("run-1", "0001", "0002")
    rest.poll_delay = 2
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1", metadata={"team": "a"})
            await trio.sleep(33)
            rest.poll_delay = 0
            rest.fail_polls["run-1"] = [RuntimeError("down")]
            await trio.sleep(28)
            got = drain(events, polls=True)
    assert [(e.name, e.time) for e in got] == [
        ("polled", 2),
        ("polled", 32),
        ("poll_error", 60),
    ]
    first = got[0]
    assert first.metadata["corrupted"] is False
    assert first.metadata["checkpoint"] == "tinker://run-1/weights/0002"
    assert first.metadata["team"] == "a"
    assert first.measurements == {"duration": 2}
    assert got[2].measurements == {"duration": 0}
    assert monitor.statistics().polls == monitor.statistics().get_requests == 3


async def test_rewatching_a_pending_run_hands_nothing_over(
    service, rest, autojump_clock
):
    """monitor_run on a run being recovered: no second detected, one restore."""
    rest.add("run-1", "0001", corrupted=True)
    service.delay = 100
    async with open_monitor(
        policy=Policy(enabled=True, jitter=0, poll_interval=10), service=service
    ) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            await trio.sleep(1)
            for _ in range(3):
                await monitor.monitor_run("run-1", metadata={"again": True})
                await trio.sleep(20)
            await monitor.executor.wait_idle()
            await trio.sleep(1)  # the outcome is followed up
            got = drain(events, polls=True)
            (completed,) = [e for e in got if e.name == "completed"]
            successor = completed.metadata["new_run_id"]
            # While the block is open: the old run is no longer watched, its
            # successor is, with what the last monitor_run said.
            assert monitor.monitored_runs == {successor}
            await trio.sleep(10)
            later = [e for e in drain(events, polls=True) if e.name == "polled"]
            assert later
            assert {e.run_id for e in later} == {successor}
            assert all(e.metadata.get("again") is True for e in later)
    assert [e.name for e in got].count("detected") == 1
    assert len(service.calls) == 1
    assert rest.poll_times("run-1") == [0]


async def test_rewatching_a_recovered_run_watches_its_successor(
    service, rest, autojump_clock
):
    """A run restored in this episode is not restored again; its successor is."""
    rest.add("run-1", "0001", corrupted=True)
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(1)
        assert monitor.monitored_runs == {"session-1:train:1"}
        monitor.stop_monitoring("session-1:train:1")
        await monitor.monitor_run("run-1")
        await trio.sleep(61)
        assert monitor.monitored_runs == {"session-1:train:1"}
    assert len(service.calls) == 1
    assert rest.poll_times("run-1") == [0]


async def test_episode_ends_with_a_healthy_poll(service, rest, autojump_clock):
    """Without follow_recovered a re-watched run is polled, restored again only
    after a healthy poll ended its episode."""
    rest.add("run-1", "0001", corrupted=True)
    policy = Policy(enabled=True, jitter=0, follow_recovered=False)
    async with open_monitor(policy=policy, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            await trio.sleep(1)
            await monitor.monitor_run("run-1")  # still corrupted: not again
            await trio.sleep(60)
            assert len(service.calls) == 1
            rest.runs["run-1"] = attrs.evolve(rest.runs["run-1"], corrupted=False)
            await trio.sleep(30)  # a healthy poll: the episode is over
            rest.corrupt("run-1")
            await trio.sleep(30)  # a new episode: restored once more
            await monitor.executor.wait_idle()
            got = drain(events)
    assert [e.name for e in got].count("detected") == 2
    assert len(service.calls) == 2


async def test_hanging_callback_does_not_wedge_the_follow_up(
    service, rest, autojump_clock
):
    """A never-returning on_recovery: the new run is still watched, nothing
    stays in progress, and leaving the block cancels the callback."""
    rest.add("run-1", "0001", corrupted=True)
    rest.add("run-2", "0001", corrupted=True)
    cancelled = []

    async def hang(old, new, checkpoint):
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(new.model_id)

    policy = Policy(enabled=True, jitter=0, on_recovery=hang)
    async with open_monitor(policy=policy, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await monitor.monitor_run("run-2")
        await trio.sleep(1)
        assert monitor.monitored_runs == {"session-1:train:1", "session-1:train:2"}
        assert monitor.statistics().in_progress == 0
        assert monitor.statistics().completed == 2
    assert sorted(cancelled) == ["session-1:train:1", "session-1:train:2"]


async def test_monitor_run_after_the_block_is_a_clear_error(service, rest):
    """After the block exits, monitor_run raises ClosedResourceError, keeps nothing."""
    rest.add("run-1", "0001")
    async with open_monitor(policy=ENABLED, service=service) as monitor:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await monitor.monitor_run("run-1")
    assert monitor.monitored_runs == frozenset()
    assert rest.polls == []


@pytest.mark.parametrize("bad", [0, -1])
async def test_max_concurrent_below_one_is_a_plain_value_error(service, bad):
    """open_monitor(max_concurrent=0) raises ValueError, not an ExceptionGroup."""
    with pytest.raises(ValueError, match="max_concurrent"):
        async with open_monitor(policy=ENABLED, service=service, max_concurrent=bad):
            pass


async def test_interrupted_recovery_is_not_exhausted(service, rest, autojump_clock):
    """Leaving the block mid-restore: phase interrupted, no exhausted, no on_failure."""
    rest.add("run-1", "0001", corrupted=True)
    service.delay = 100
    failures = []
    policy = Policy(
        enabled=True, jitter=0, on_failure=lambda run_id, exc: failures.append(run_id)
    )
    async with open_monitor(policy=policy, service=service) as monitor:
        async with monitor.subscribe() as events:
            await monitor.monitor_run("run-1")
            await trio.sleep(1)
        executor = monitor.executor
        subscription = monitor.subscribe()
        events = await subscription.__aenter__()
    got = drain(events)
    await subscription.__aexit__(None, None, None)
    assert [e.name for e in got] == ["interrupted"]
    assert got[0].measurements == {"attempt": 1}
    assert executor.recovery_state("run-1").phase == "interrupted"
    stats = monitor.statistics()
    assert (stats.interrupted, stats.exhausted, stats.in_progress) == (1, 0, 0)
    assert failures == []
