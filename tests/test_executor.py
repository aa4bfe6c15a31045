"""The executor: attempts, backoff, strategies, fallback, callbacks."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_tinkex_recovery import (
    AlreadyPendingError,
    AuthenticationError,
    BadRequestError,
    Best,
    CheckpointUnavailableError,
    InternalServerError,
    NoCheckpointError,
    Policy,
    RecoveryDisabledError,
    ResponseValidationError,
    Specific,
    open_executor,
)

from .conftest import T0, FakeService, checkpoint, drain

ENABLED = Policy(enabled=True, jitter=0)


async def wait_done(executor, *run_ids):
    """Wait until the executor has nothing pending (run_ids for the reader)."""
    await executor.wait_idle()
    assert all(not executor.recovery_state(r).pending for r in run_ids)


def names(events):
    return [event.name for event in drain(events)]


async def test_attempts_back_off_exponentially(service, rest, autojump_clock):
    """Attempts start at 0, 5, 15, 35, 75 with the default backoff, jitter off."""
    rest.add("run-1", "0001")
    service.failures = [InternalServerError("down", status=503)] * 10
    failures = []
    policy = Policy(
        enabled=True,
        jitter=0,
        max_attempts=5,
        on_failure=lambda run_id, error: failures.append((run_id, error)),
    )
    async with open_executor(service=service) as executor:
        async with executor.subscribe() as events:
            await executor.recover("run-1", None, policy)
            await wait_done(executor, "run-1")
            got = names(events)
    assert [t for t, _, _ in service.calls] == [0, 5, 15, 35, 75]
    assert got.count("failed") == 5
    assert got[-1] == "exhausted"
    assert len(failures) == 1
    assert failures[0][0] == "run-1"
    assert isinstance(failures[0][1], InternalServerError)
    assert executor.recovery_state("run-1").phase == "exhausted"


async def test_backoff_is_capped_by_max_backoff(service, rest, autojump_clock):
    """Delay n is min(backoff·2^(n-1), max_backoff)."""
    rest.add("run-1", "0001")
    service.failures = [RuntimeError("flaky")] * 10
    policy = Policy(enabled=True, jitter=0, max_attempts=5, backoff=5, max_backoff=12)
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert [t for t, _, _ in service.calls] == [0, 5, 15, 27, 39]


async def test_backoff_jitter_stays_within_bounds(service, rest, autojump_clock):
    """With jitter j each delay lies in delay·(1 ± j)."""
    rest.add("run-1", "0001")
    service.failures = [RuntimeError("flaky")] * 10
    policy = Policy(
        enabled=True, jitter=0.5, max_attempts=4, backoff=10, max_backoff=100
    )
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    times = [t for t, _, _ in service.calls]
    delays = [b - a for a, b in itertools.pairwise(times)]
    for delay, nominal in zip(delays, [10, 20, 40], strict=True):
        assert nominal * 0.5 <= delay <= nominal * 1.5


async def test_failing_more_than_max_attempts_ends_exhausted(
    service, rest, autojump_clock
):
    """A service failing more often than max_attempts: failed x3, exhausted."""
    rest.add("run-1", "0001")
    service.failures = [RuntimeError("nope")] * 5
    calls = []

    async def on_failure(run_id, error):
        await trio.lowlevel.checkpoint()
        calls.append((run_id, str(error)))

    policy = Policy(enabled=True, jitter=0, on_failure=on_failure)
    async with open_executor(service=service) as executor:
        async with executor.subscribe() as events:
            await executor.recover("run-1", None, policy)
            await wait_done(executor, "run-1")
            got = names(events)
    assert got == [
        "started",
        "checkpoint_selected",
        "failed",
        "started",
        "checkpoint_selected",
        "failed",
        "started",
        "checkpoint_selected",
        "failed",
        "exhausted",
    ]
    assert calls == [("run-1", "nope")]
    stats = executor.statistics()
    assert (stats.attempts, stats.failed, stats.exhausted, stats.completed) == (
        3,
        3,
        1,
        0,
    )


async def test_retry_succeeds(service, rest, autojump_clock):
    """Two failures then success: completed at t=15."""
    rest.add("run-1", "0001")
    service.failures = [RuntimeError("a"), RuntimeError("b")]
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, ENABLED)
        await wait_done(executor, "run-1")
        state = executor.recovery_state("run-1")
    assert state.phase == "done"
    assert state.attempt == 3
    assert state.new_run_id == "session-1:train:1"
    assert service.calls[-1][0] == 15


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", status=400),
        AuthenticationError("who", status=401),
        CheckpointUnavailableError("gone", path="tinker://run-1/weights/0001"),
    ],
)
async def test_non_retryable_errors_exhaust_at_once(
    service, rest, autojump_clock, error
):
    """Errors that cannot succeed on retry go straight to exhausted."""
    rest.add("run-1", "0001")
    service.failures = [error]
    seen = []
    policy = Policy(
        enabled=True,
        jitter=0,
        fallback=False,
        on_failure=lambda run_id, exc: seen.append(exc),
    )
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert len(service.calls) == 1
    assert seen == [error]


@pytest.mark.parametrize(
    "error", [RuntimeError("foreign"), ResponseValidationError("truncated")]
)
async def test_foreign_and_malformed_errors_are_retried(
    service, rest, autojump_clock, error
):
    """Exceptions from a user's service and malformed answers are retried."""
    rest.add("run-1", "0001")
    service.failures = [error]
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, ENABLED)
        await wait_done(executor, "run-1")
    assert len(service.calls) == 2
    assert executor.recovery_state("run-1").phase == "done"


async def test_no_checkpoint_at_all_exhausts_at_once(service, rest, autojump_clock):
    """A run without any checkpoint ends as exhausted with NoCheckpointError."""
    rest.add("run-1")
    errors = []
    policy = Policy(enabled=True, jitter=0, on_failure=lambda r, e: errors.append(e))
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert service.calls == []
    assert len(errors) == 1
    assert isinstance(errors[0], NoCheckpointError)


async def test_disabled_policy_refuses(service):
    """recover() with a disabled policy raises and queues nothing."""
    async with open_executor(service=service) as executor:
        with pytest.raises(RecoveryDisabledError):
            await executor.recover("run-1", None, Policy())
        assert executor.recovery_state("run-1") is None


async def test_already_pending_in_every_pending_phase(service, rest, autojump_clock):
    """Queued, attempting or waiting to retry: a second recover() is refused."""
    rest.add("run-1", "0001")
    rest.add("run-2", "0001")
    service.delay = 10
    service.failures = [RuntimeError("first attempt fails")]
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, ENABLED)
        await executor.recover("run-2", None, ENABLED)
        assert executor.recovery_state("run-2").phase == "queued"
        with pytest.raises(AlreadyPendingError, match="run-2"):
            await executor.recover("run-2", None, ENABLED)
        await trio.sleep(1)
        assert executor.recovery_state("run-1").phase == "attempting"
        with pytest.raises(AlreadyPendingError):
            await executor.recover("run-1", None, ENABLED)
        await trio.sleep(10)
        state = executor.recovery_state("run-1")
        assert state.phase == "waiting"
        assert state.retry_at == 15
        with pytest.raises(AlreadyPendingError):
            await executor.recover("run-1", None, ENABLED)
        await wait_done(executor, "run-1", "run-2")
        # Once done, the run may be recovered again.
        await executor.recover("run-1", None, ENABLED)
        assert executor.recovery_state("run-1").phase == "queued"


async def test_max_concurrent_bounds_attempts_in_arrival_order(
    service, rest, autojump_clock
):
    """At most max_concurrent attempts at once; the rest wait in order."""
    run_ids = [f"run-{i}" for i in range(5)]
    for run_id in run_ids:
        rest.add(run_id, "0001")
    service.delay = 10
    async with open_executor(service=service, max_concurrent=2) as executor:
        for run_id in run_ids:
            await executor.recover(run_id, None, ENABLED)
        await wait_done(executor, *run_ids)
    starts = [(t, path.split("/")[2]) for t, path, _ in service.calls]
    assert [t for t, _ in starts] == [0, 0, 10, 10, 20]
    assert {r for t, r in starts if t == 0} == {"run-0", "run-1"}
    assert {r for t, r in starts if t == 10} == {"run-2", "run-3"}
    assert starts[-1] == (20, "run-4")


async def test_single_slot_serves_in_arrival_order(service, rest, autojump_clock):
    """With max_concurrent=1 runs are restored exactly in hand-off order."""
    run_ids = [f"run-{i}" for i in range(20)]
    for run_id in run_ids:
        rest.add(run_id, "0001")
    service.delay = 1
    async with open_executor(service=service) as executor:
        for run_id in run_ids:
            await executor.recover(run_id, None, ENABLED)
        await wait_done(executor, *run_ids)
    assert [path.split("/")[2] for _, path, _ in service.calls] == run_ids


async def test_invalid_max_concurrent():
    """max_concurrent must be a positive int."""
    with pytest.raises(ValueError, match="max_concurrent"):
        async with open_executor(max_concurrent=0):
            pass  # pragma: no cover


# -- checkpoint selection ----------------------------------------------------


async def test_specific_strategy(service, rest, autojump_clock):
    """Specific(path) restores that path, whatever the run's newest is."""
    rest.add("run-1", "0001", "0002")
    policy = Policy(
        enabled=True,
        jitter=0,
        checkpoint_strategy=Specific("tinker://run-1/weights/0001"),
    )
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert [p for _, p, _ in service.calls] == ["tinker://run-1/weights/0001"]


async def test_latest_uses_the_hand_off_checkpoint(service, rest, autojump_clock):
    """Latest uses last_checkpoint from the hand-off without asking the service."""
    rest.add("run-1", "0001", "0002")
    async with open_executor(service=service) as executor:
        await executor.recover(
            "run-1", None, ENABLED, last_checkpoint="tinker://run-1/weights/0001"
        )
        await wait_done(executor, "run-1")
    assert [p for _, p, _ in service.calls] == ["tinker://run-1/weights/0001"]
    assert rest.polls == []
    assert rest.listed == []


async def test_latest_fetches_the_run_when_not_given(service, rest, autojump_clock):
    """Without a hand-off checkpoint or run, Latest fetches the run."""
    rest.add("run-1", "0001", "0002")
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, ENABLED)
        await wait_done(executor, "run-1")
    assert [p for _, p, _ in service.calls] == ["tinker://run-1/weights/0002"]
    assert rest.poll_times("run-1") == [0]


async def test_latest_uses_the_run_passed(service, rest, autojump_clock):
    """A run passed to recover() is used instead of fetching it."""
    run = rest.add("run-1", "0001", "0002")
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, ENABLED, run=run)
        await wait_done(executor, "run-1")
    assert [p for _, p, _ in service.calls] == ["tinker://run-1/weights/0002"]
    assert rest.polls == []


async def test_without_optimizer(service, rest, autojump_clock):
    """restore_optimizer=False restores the weights only."""
    rest.add("run-1", "0001")
    policy = Policy(enabled=True, jitter=0, restore_optimizer=False)
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert service.calls == [(0, "tinker://run-1/weights/0001", False)]


def with_losses(rest, run_id, losses):
    rest.add(run_id)
    rest.checkpoints[run_id] = [
        checkpoint(
            run_id,
            f"{i:04}",
            minutes=i,
            metadata=None if loss is None else {"loss": loss},
        )
        for i, loss in enumerate(losses)
    ]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Best(), "0001"),
        (Best(mode="max"), "0002"),
        (Best(metric="acc", mode="max"), None),
        (Best(key=lambda c: c.time.timestamp()), "0000"),
    ],
)
async def test_best_strategy(service, rest, autojump_clock, strategy, expected):
    """Best picks by user_metadata metric or key; no usable metric → exhausted."""
    with_losses(rest, "run-1", ["0.5", 0.1, "0.9", None, "nan"])
    errors = []
    policy = Policy(
        enabled=True,
        jitter=0,
        checkpoint_strategy=strategy,
        on_failure=lambda r, e: errors.append(e),
    )
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    if expected is None:
        assert service.calls == []
        assert isinstance(errors[0], NoCheckpointError)
        assert "'acc'" in str(errors[0])
    else:
        assert [p for _, p, _ in service.calls] == [
            f"tinker://run-1/weights/{expected}"
        ]


async def test_best_falls_back_to_the_next_best(service, rest, autojump_clock):
    """When the best checkpoint is unavailable, the next best is tried."""
    with_losses(rest, "run-1", ["0.5", "0.1", "0.9"])
    service.unavailable = {"tinker://run-1/weights/0001"}
    policy = Policy(enabled=True, jitter=0, checkpoint_strategy=Best())
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert [p.rsplit("/", 1)[1] for _, p, _ in service.calls] == ["0001", "0000"]
    assert executor.recovery_state("run-1").phase == "done"


async def test_fallback_skips_expired_and_sampler_checkpoints(
    service, rest, autojump_clock
):
    """Latest falls back newest-first, skipping expired and sampler checkpoints."""
    rest.add("run-1")
    past = T0 - dt.timedelta(days=1)
    rest.checkpoints["run-1"] = [
        checkpoint("run-1", "0001", minutes=1),
        checkpoint("run-1", "0002", minutes=2, expires_at=past),
        checkpoint("run-1", "0003", minutes=3, kind="sampler"),
        checkpoint("run-1", "0004", minutes=4),
    ]
    service.unavailable = {"tinker://run-1/weights/0004"}
    async with open_executor(service=service) as executor:
        async with executor.subscribe() as events:
            await executor.recover(
                "run-1", None, ENABLED, last_checkpoint="tinker://run-1/weights/0004"
            )
            await wait_done(executor, "run-1")
            got = names(events)
    assert [p for _, p, _ in service.calls] == [
        "tinker://run-1/weights/0004",
        "tinker://run-1/weights/0001",
    ]
    assert got == [
        "started",
        "checkpoint_selected",
        "checkpoint_selected",
        "client_created",
        "completed",
    ]


async def test_without_fallback_an_unavailable_checkpoint_exhausts(
    service, rest, autojump_clock
):
    """fallback=False: CheckpointUnavailableError ends the recovery."""
    rest.add("run-1", "0001", "0002")
    service.unavailable = {"tinker://run-1/weights/0002"}
    policy = Policy(enabled=True, jitter=0, fallback=False)
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert len(service.calls) == 1
    assert executor.recovery_state("run-1").phase == "exhausted"


async def test_every_candidate_unavailable_exhausts(service, rest, autojump_clock):
    """With no older candidate left, the last unavailability ends it."""
    rest.add("run-1", "0001", "0002")
    service.unavailable = {
        "tinker://run-1/weights/0001",
        "tinker://run-1/weights/0002",
    }
    errors = []
    policy = Policy(enabled=True, jitter=0, on_failure=lambda r, e: errors.append(e))
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await wait_done(executor, "run-1")
    assert len(service.calls) == 2
    assert isinstance(errors[0], CheckpointUnavailableError)
    assert errors[0].path == "tinker://run-1/weights/0001"


# -- callbacks and events ------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "old"),
    [
        ({"training_client": "client-A"}, "client-A"),
        ({"training_pid": "pid-B"}, "pid-B"),
        ({}, None),
    ],
)
async def test_on_recovery_gets_old_new_and_checkpoint(
    service, rest, autojump_clock, metadata, old
):
    """on_recovery(old, new_client, checkpoint), old from the metadata."""
    rest.add("run-1", "0001")
    got = []

    async def on_recovery(old_client, new_client, ckpt):
        await trio.sleep(1)
        got.append((old_client, new_client.model_id, ckpt.tinker_path))

    policy = Policy(enabled=True, jitter=0, on_recovery=on_recovery)
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy, metadata=metadata)
        await wait_done(executor, "run-1")
        await trio.sleep(5)
    assert got == [(old, "session-1:train:1", "tinker://run-1/weights/0001")]


async def test_callback_errors_are_logged_and_swallowed(
    service, rest, autojump_clock, caplog
):
    """A raising on_failure (async) is logged; the executor goes on."""
    rest.add("run-1")
    rest.add("run-2", "0001")

    async def on_failure(run_id, error):
        raise ValueError("callback bug")

    policy = Policy(enabled=True, jitter=0, on_failure=on_failure)
    async with open_executor(service=service) as executor:
        await executor.recover("run-1", None, policy)
        await executor.recover("run-2", None, policy)
        await wait_done(executor, "run-1", "run-2")
    assert executor.recovery_state("run-2").phase == "done"
    assert "on_failure callback raised" in caplog.text


async def test_event_metadata(service, rest, autojump_clock):
    """Events carry user metadata, run_id, attempt, strategy, checkpoint, error."""
    rest.add("run-1", "0001")
    service.failures = [RuntimeError("once")]
    async with open_executor(service=service) as executor:
        async with executor.subscribe() as events:
            await executor.recover("run-1", None, ENABLED, metadata={"team": "x"})
            await wait_done(executor, "run-1")
            got = drain(events)
    failed = next(e for e in got if e.name == "failed")
    assert failed.metadata["team"] == "x"
    assert failed.metadata["run_id"] == "run-1"
    assert failed.metadata["strategy"] == "latest"
    assert failed.metadata["checkpoint"] == "tinker://run-1/weights/0001"
    assert str(failed.metadata["error"]) == "once"
    assert failed.measurements == {"attempt": 1}
    completed = got[-1]
    assert completed.name == "completed"
    assert completed.measurements == {"attempt": 2}
    assert completed.metadata["client"].model_id == "session-1:train:1"
    assert [e.time for e in got] == sorted(e.time for e in got)


async def test_leaving_cancels_recoveries(service, rest, autojump_clock):
    """Leaving open_executor ends attempts and backoff waits."""
    rest.add("run-1", "0001")
    rest.add("run-2", "0001")
    service.failures = [RuntimeError("x")]
    service.delay = 1
    async with open_executor(service=service, max_concurrent=2) as executor:
        await executor.recover("run-1", None, ENABLED)
        await trio.sleep(2)  # run-1 is waiting to retry
        service.delay = 100
        await executor.recover("run-2", None, ENABLED)
        await trio.sleep(1)  # run-2 is attempting
        assert executor.recovery_state("run-1").phase == "waiting"
        assert executor.recovery_state("run-2").phase == "attempting"
    assert executor.recovery_state("run-1").phase == "interrupted"
    assert executor.recovery_state("run-1").error == "RuntimeError: x"
    assert executor.recovery_state("run-2").phase == "interrupted"
    stats = executor.statistics()
    assert (stats.in_progress, stats.interrupted, stats.exhausted) == (0, 2, 0)


async def test_recover_checkpoints(service):
    """recover() is a checkpoint, also when it refuses."""
    async with open_executor(service=service) as executor:
        with trio.testing.assert_checkpoints(), pytest.raises(RecoveryDisabledError):
            await executor.recover("run-1", None, Policy())


async def test_recover_validates_input(service):
    """Bad run ids, paths and a missing service are clear errors."""
    async with open_executor() as executor:
        with pytest.raises(ValueError, match="run_id"):
            await executor.recover("a/b", service, ENABLED)
        with pytest.raises(ValueError, match="not a checkpoint path"):
            await executor.recover("run-1", service, ENABLED, last_checkpoint="x")
        with pytest.raises(ValueError, match="no service to recover run 'run-1'"):
            await executor.recover("run-1", None, ENABLED)


async def test_executor_repr_and_constructor():
    """Executor has no public constructor and a short repr."""
    from trio_tinkex_recovery import Executor

    with pytest.raises(TypeError, match="open_executor"):
        Executor()
    async with open_executor(service=FakeService()) as executor:
        assert repr(executor) == "<Executor max_concurrent=1 in_progress=0>"


async def test_outcomes_tell_how_each_recovery_ended(service, rest, autojump_clock):
    """Every recovery's end reaches outcomes(), with the new client when done."""
    rest.add("run-1", "0001")
    rest.add("run-2")  # no checkpoint at all: exhausted at once
    async with open_executor(service=service) as executor:
        async with executor.outcomes() as outcomes:
            await executor.recover("run-1", None, ENABLED)
            await executor.recover("run-2", None, ENABLED)
            await executor.wait_idle()
            got = {o.run_id: o for o in [outcomes.receive_nowait() for _ in range(2)]}
    assert got["run-1"].state.phase == "done"
    assert got["run-1"].client.model_id == got["run-1"].state.new_run_id
    assert got["run-1"].checkpoint.tinker_path == "tinker://run-1/weights/0001"
    assert got["run-2"].state.phase == "exhausted"
    assert got["run-2"].client is None


@pytest.mark.parametrize("when", ["in flight", "waiting", "queued"])
async def test_interrupt_cancels_a_recovery_at_once(
    service, rest, autojump_clock, when
):
    """interrupt() cancels the restore call in flight (or the retry wait, or
    the queued hand-off): the recovery ends interrupted, never exhausted,
    and no restore lands afterwards; another run's goes on."""
    rest.add("run-1", "0001")
    rest.add("run-2", "0001")
    failures = []
    policy = Policy(
        enabled=True, jitter=0, on_failure=lambda *args: failures.append(args)
    )
    service.delay = 10
    if when == "waiting":
        service.failures = [InternalServerError("down", status=503)]
    async with open_executor(service=service) as executor:
        async with executor.subscribe() as events:
            if when == "queued":
                await executor.recover("run-2", None, policy)  # holds the slot
            await executor.recover("run-1", None, policy)
            await trio.sleep(12 if when == "waiting" else 1)
            expected = {"in flight": "attempting", "waiting": "waiting"}
            assert executor.recovery_state("run-1").phase == expected.get(
                when, "queued"
            )
            executor.interrupt("run-1")
            executor.interrupt("run-unknown")
            await executor.wait_idle()
            got = names(events)
    assert executor.recovery_state("run-1").phase == "interrupted"
    assert "interrupted" in got
    assert "exhausted" not in got
    assert failures == []
    restored = [path for _, path, _ in service.calls if "run-1" in path]
    assert service.created == (1 if when == "queued" else 0)
    assert len(restored) == {"in flight": 1, "waiting": 1, "queued": 0}[when]
