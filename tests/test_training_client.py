"""TrainingClient trains: forward_backward, optim_step, save_state with metadata."""

from __future__ import annotations

import math

import pytest

from trio_tinkex_recovery import (
    APIConnectionError,
    Config,
    ForwardBackwardOutput,
    RequestFailedError,
    open_service_client,
    set_testing,
)
from trio_tinkex_recovery.testing import Fault

from .conftest import FAKE_KEY

KEY = FAKE_KEY
LAST = "tinker://run-1/weights/ckpt-0002"


def datum(*given):
    """One example in the SDK's JSON form: predict each next token."""
    tokens = list(given)
    return {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
        "loss_fn_inputs": {
            "target_tokens": {
                "data": tokens[1:],
                "dtype": "int64",
                "shape": [len(tokens) - 1],
            }
        },
    }


BATCH = [datum(1, 2, 3), datum(4, 5, 6)]


@pytest.fixture(autouse=True)
def _exact_retries():
    """Retries without jitter and no heartbeat, as in every client test."""
    with set_testing(True):
        yield


def service_for(fake, **overrides):
    """A native client over ``fake``, with this file's key."""
    return open_service_client(
        Config(api_key=KEY, base_url="https://tinker.test", **overrides),
        transport=fake.transport(),
    )


def sent(fake, path):
    return [r.json for r in fake.requests if r.path == path]


async def test_a_training_step_and_a_save_go_out_in_order(fake, autojump_clock):
    """forward_backward, optim_step and save_state share one seq_id sequence."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state_with_optimizer(LAST)
        first = await client.forward_backward(BATCH, "cross_entropy")
        metrics = await client.optim_step(learning_rate=2e-4)
        second = await client.forward_backward(
            BATCH, "importance_sampling", loss_fn_config={"clip": 0.2}
        )
        saved = await client.save_state("step-1", user_metadata={"step": "1"})
    steps = fake.training_steps(client.model_id)
    assert [(s.kind, s.seq_id) for s in steps] == [
        ("forward_backward", 1),
        ("optim_step", 2),
        ("forward_backward", 3),
        ("save_weights", 4),
    ]
    assert (steps[0].examples, steps[1].learning_rate) == (2, 2e-4)
    assert isinstance(first, ForwardBackwardOutput)
    assert first.metrics == {"loss:sum": 2.0}
    assert second.metrics == {"loss:sum": 1.0}  # one optimizer step later
    assert len(first.loss_fn_outputs) == 2
    assert metrics == {}
    # The JSON the SDK's ForwardBackwardRequest and OptimStepRequest dump to.
    assert sent(fake, "/api/v1/forward_backward") == [
        {
            "forward_backward_input": {"data": BATCH, "loss_fn": "cross_entropy"},
            "model_id": client.model_id,
            "seq_id": 1,
        },
        {
            "forward_backward_input": {
                "data": BATCH,
                "loss_fn": "importance_sampling",
                "loss_fn_config": {"clip": 0.2},
            },
            "model_id": client.model_id,
            "seq_id": 3,
        },
    ]
    assert sent(fake, "/api/v1/optim_step") == [
        {
            "model_id": client.model_id,
            "type": "optim_step",
            "adam_params": {
                "learning_rate": 2e-4,
                "beta1": 0.9,
                "beta2": 0.95,
                "eps": 1e-12,
                "weight_decay": 0.0,
                "grad_clip_norm": 0.0,
            },
            "seq_id": 2,
        }
    ]
    [save] = sent(fake, "/api/v1/save_weights")
    assert save["user_metadata"] == {"step": "1"}
    [checkpoint] = fake.checkpoints(client.model_id)
    assert checkpoint.tinker_path == saved.tinker_path
    assert checkpoint.user_metadata == {"step": "1"}


async def test_a_step_whose_answer_was_lost_is_repeated_once(fake, autojump_clock):
    """The same call after a lost answer resends the same seq_id and key."""
    async with service_for(fake, max_retries=0) as service:
        client = await service.create_training_client_from_state(LAST)
        fake.script(Fault.drop(after_action=True, path="/api/v1/forward_backward"))
        with pytest.raises(APIConnectionError):
            await client.forward_backward(BATCH, "cross_entropy")
        await client.forward_backward(BATCH, "cross_entropy")
        await client.optim_step()
    posts = [r for r in fake.requests if r.path == "/api/v1/forward_backward"]
    assert [r.json["seq_id"] for r in posts] == [1, 1]
    assert posts[0].idempotency_key == posts[1].idempotency_key
    steps = fake.training_steps(client.model_id)
    assert [(s.kind, s.seq_id) for s in steps] == [
        ("forward_backward", 1),
        ("optim_step", 2),
    ]


async def test_a_save_lost_with_other_metadata_is_a_new_save(fake, autojump_clock):
    """A lost save is repeated only by a save of the same name and metadata."""
    async with service_for(fake, max_retries=0) as service:
        client = await service.create_training_client_from_state(LAST)
        fake.script(Fault.drop(after_action=False, path="/api/v1/save_weights"))
        with pytest.raises(APIConnectionError):
            await client.save_state("s", user_metadata={"step": "1"})
        await client.save_state("s", user_metadata={"step": "2"})
    [save] = fake.training_steps(client.model_id)
    assert save.seq_id == 2
    assert fake.checkpoints(client.model_id)[0].user_metadata == {"step": "2"}


async def test_a_corrupted_model_fails_its_steps_as_server_errors(fake, autojump_clock):
    """A step on a corrupted model raises a retryable RequestFailedError."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        fake.corrupt(client.model_id)
        with pytest.raises(RequestFailedError) as info:
            await client.forward_backward(BATCH, "cross_entropy")
    assert info.value.category == "server"
    assert info.value.retryable
    assert "corrupted" in str(info.value)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.forward_backward([], "cross_entropy"), ValueError),
        (lambda c: c.forward_backward(["tokens"], "cross_entropy"), TypeError),
        (lambda c: c.forward_backward("text", "cross_entropy"), TypeError),
        (lambda c: c.forward_backward(BATCH[0], "cross_entropy"), TypeError),
        (lambda c: c.forward_backward([{"x": math.nan}], "cross_entropy"), TypeError),
        (lambda c: c.forward_backward(BATCH, None), TypeError),
        (lambda c: c.optim_step(learning_rate=math.inf), ValueError),
        (lambda c: c.optim_step(learning_rate=-1.0), ValueError),
        (lambda c: c.optim_step(beta1="0.9"), TypeError),
        (lambda c: c.save_state("s", user_metadata={"step": 1}), TypeError),
    ],
)
async def test_bad_arguments_are_refused_before_sending(
    fake, autojump_clock, call, error
):
    """Arguments that cannot make a valid request raise; no seq_id is used."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        with pytest.raises(error):
            await call(client)
        await client.optim_step()
    assert [s.seq_id for s in fake.training_steps(client.model_id)] == [1]
