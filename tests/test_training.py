"""Training through a recovery in one program: `Monitor.training` and its steps.

A loop on the native client trains against the simulator (in process, on
the mock clock); the simulator's per-model request log says which steps
each model received, so "every step exactly once on the final lineage" and
"nothing reaches the old model after the detection" are counted by it, not
by the library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from trio_tinkex_recovery import (
    Config,
    InternalServerError,
    Policy,
    RecoveryFailedError,
    open_monitor,
    open_service_client,
)

from .conftest import FAKE_KEY

if TYPE_CHECKING:
    from trio_tinkex_recovery.testing import FakeTinker

POLICY = Policy(enabled=True, jitter=0, poll_interval=10, backoff=1)
DATA = [{"model_input": {"chunks": []}, "loss_fn_inputs": {}}]


def rate(step: int) -> float:
    """Each step's learning rate names it in the simulator's log."""
    return step * 1e-6


def step_of_rate(value: float) -> int:
    return round(value / 1e-6)


async def train(step, *, every: int = 3, metadata: bool = True) -> None:
    """One step: a forward-backward pass, an optimizer step, a save every few."""
    await step.client.forward_backward(DATA, "cross_entropy")
    await trio.sleep(1)  # the step takes time: corruption can land inside it
    await step.client.optim_step(learning_rate=rate(step.number))
    if step.number % every == 0:
        await step.client.save_state(
            f"step-{step.number:04d}",
            user_metadata={"step": str(step.number)} if metadata else None,
        )


def steps_on(fake: FakeTinker, model_id: str) -> list[tuple[int, float]]:
    """(step, arrival time) of each optimizer step ``model_id`` received."""
    return [
        (step_of_rate(s.learning_rate), s.time)
        for s in fake.training_steps(model_id)
        if s.kind == "optim_step"
    ]


def final_lineage_steps(fake, first_model, training) -> list[int]:
    """The steps that count: each model's up to the checkpoint restored from it."""
    kept = []
    model = first_model
    for record in training.history:
        assert record.old_run_id == model
        kept += [n for n, _ in steps_on(fake, model) if n < record.resumed_at]
        model = record.new_run_id
    return kept + [n for n, _ in steps_on(fake, model)]


async def run_loop(
    fake,
    *,
    steps=12,
    corrupt_after=(),
    first_step=1,
    step_of=None,
    every=3,
    metadata=True,
    before_corrupt=None,
):
    """Train ``steps`` steps; corrupt the run after each step in ``corrupt_after``.

    Returns (first model, training, detection times by run).
    """
    detected: dict[str, float] = {}
    config = Config(api_key=FAKE_KEY, base_url="https://tinker.test")
    async with open_service_client(config, transport=fake.transport()) as service:
        client = await service.create_training_client_from_state_with_optimizer(
            "tinker://run-1/weights/ckpt-0002"
        )
        async with open_monitor(policy=POLICY, service=service) as monitor:
            async with monitor.subscribe() as events:

                async def note():
                    async for event in events:
                        if event.name == "detected":
                            detected[event.run_id] = event.time

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(note)
                    async with monitor.training(
                        client, first_step=first_step, step_of=step_of
                    ) as training:
                        last = first_step + steps - 1
                        pending = list(corrupt_after)
                        try:
                            while training.next_step <= last:
                                async with training.step() as step:
                                    await train(step, every=every, metadata=metadata)
                                    if pending and step.number == pending[0]:
                                        pending.pop(0)
                                        if before_corrupt is not None:
                                            before_corrupt()
                                        fake.corrupt(training.run_id)
                        except RecoveryFailedError as exc:
                            failure = exc
                        else:
                            failure = None
                    nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return client.model_id, training, detected


def assert_no_request_after_detection(fake, training, detected):
    for record in training.history:
        when = detected[record.old_run_id]
        late = [t for t in (s.time for s in fake.training_steps(record.old_run_id))]
        assert all(t <= when for t in late), (record.old_run_id, late, when)


async def test_a_loop_without_corruption_runs_each_step_once(autojump_clock, fake):
    """No recovery: steps 1..12 once each, in order, on the first model."""
    first, training, _ = await run_loop(fake)
    assert [n for n, _ in steps_on(fake, first)] == list(range(1, 13))
    assert training.history == ()
    assert training.next_step == 13


async def test_one_corruption_resumes_from_the_checkpoints_step(autojump_clock, fake):
    """Corrupted after step 7 (checkpoint at 6): 7.. are redone on the new model,
    every step counts once on the final lineage, none reached the old one late."""
    first, training, detected = await run_loop(fake, corrupt_after=[7])
    (record,) = training.history
    assert record.resumed_at == 7
    assert record.checkpoint.endswith("step-0006")
    assert final_lineage_steps(fake, first, training) == list(range(1, 13))
    assert fake.restore_of(record.new_run_id).optimizer
    assert_no_request_after_detection(fake, training, detected)


async def test_two_corruptions_in_a_row(autojump_clock, fake):
    """A second corruption of the restored run is carried through the same way."""
    first, training, detected = await run_loop(fake, steps=15, corrupt_after=[5, 10])
    assert [r.resumed_at for r in training.history] == [4, 10]
    assert final_lineage_steps(fake, first, training) == list(range(1, 16))
    assert_no_request_after_detection(fake, training, detected)


async def test_first_step_other_than_one(autojump_clock, fake):
    """Steps are numbered from first_step; a recovery resumes within them."""
    first, training, _ = await run_loop(fake, first_step=100, corrupt_after=[104])
    (record,) = training.history
    assert record.resumed_at == 103  # the checkpoint of step 102
    assert final_lineage_steps(fake, first, training) == list(range(100, 112))


async def test_step_of_reads_the_checkpoint(autojump_clock, fake):
    """A custom step_of: here the step is in the checkpoint's name."""
    first, training, _ = await run_loop(
        fake,
        corrupt_after=[7],
        metadata=False,
        step_of=lambda checkpoint: int(checkpoint.tinker_path.rsplit("-", 1)[1]),
    )
    assert training.history[0].resumed_at == 7
    assert final_lineage_steps(fake, first, training) == list(range(1, 13))


async def test_a_checkpoint_without_a_step_is_a_clear_error(autojump_clock, fake):
    """No user_metadata step and no step_of: step() says what to do."""
    with pytest.raises(RecoveryFailedError) as info:
        await run_loop(fake, corrupt_after=[7], metadata=False)
    assert "user_metadata" in str(info.value)
    assert "step_of" in str(info.value)


async def test_an_exhausted_recovery_raises_from_step(autojump_clock, fake):
    """Corrupted while no checkpoint can be restored: step() raises."""

    def expire():
        for name in ("ckpt-0001", "ckpt-0002"):
            fake.expire_checkpoint(f"tinker://run-1/weights/{name}")

    with pytest.raises(RecoveryFailedError, match="exhausted"):
        await run_loop(fake, corrupt_after=[1], before_corrupt=expire)


class Flaky:
    """Fails the next ``count`` optimizer steps with a 500 (the run stays healthy)."""

    def __init__(self, client, count):
        self.client, self.count = client, count
        self.model_id = client.model_id

    async def forward_backward(self, *args, **kwargs):
        return await self.client.forward_backward(*args, **kwargs)

    async def optim_step(self, **kwargs):
        if self.count:
            self.count -= 1
            raise InternalServerError("POST /api/v1/optim_step: HTTP 500", status=500)
        return await self.client.optim_step(**kwargs)

    async def save_state(self, *args, **kwargs):
        return await self.client.save_state(*args, **kwargs)


async def flaky_loop(fake, failures, *, retries=2, corrupt_while_waiting=False):
    config = Config(api_key=FAKE_KEY, base_url="https://tinker.test")
    async with open_service_client(config, transport=fake.transport()) as service:
        client = await service.create_training_client_from_state_with_optimizer(
            "tinker://run-1/weights/ckpt-0002"
        )
        flaky = Flaky(client, 0)
        async with open_monitor(policy=POLICY, service=service) as monitor:
            async with monitor.training(flaky, retries=retries) as training:
                while training.next_step <= 6:
                    if training.next_step == 4 and failures:
                        flaky.count, failures = failures, 0
                        if corrupt_while_waiting:
                            fake.corrupt(client.model_id)
                    try:
                        async with training.step() as step:
                            await train(step)
                    except InternalServerError as exc:
                        return client.model_id, exc
    return client.model_id, training


async def test_a_failed_step_on_a_healthy_run_is_tried_again(autojump_clock, fake):
    """Two 500s while the run is healthy: step 4 is retried, then goes through."""
    first, training = await flaky_loop(fake, failures=2)
    assert training.history == ()
    assert [n for n, _ in steps_on(fake, first)] == list(range(1, 7))


async def test_failures_past_retries_propagate(autojump_clock, fake):
    """Three 500s in a row with retries=2: the third propagates."""
    first, error = await flaky_loop(fake, failures=3)
    assert isinstance(error, InternalServerError)
    assert [n for n, _ in steps_on(fake, first)] == [1, 2, 3]


async def test_a_corruption_while_waiting_for_a_verdict(autojump_clock, fake):
    """The step failed and the run turns out corrupted: a recovery, not a retry."""
    first, training = await flaky_loop(fake, failures=1, corrupt_while_waiting=True)
    (record,) = training.history
    assert record.resumed_at == 4
    assert final_lineage_steps(fake, first, training) == list(range(1, 7))


async def test_training_needs_a_run_id_or_a_client(autojump_clock, fake):
    """A bad argument is a TypeError that says what was expected."""
    async with open_monitor(policy=POLICY, service=object()) as monitor:
        with pytest.raises(TypeError, match="model_id"):
            async with monitor.training(42):
                pass
        with pytest.raises(ValueError, match="retries"):
            async with monitor.training("run-1", retries=-1):
                pass
