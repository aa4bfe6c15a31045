"""What a training script does, on the simulator: create a model, train it,
save checkpoints with metadata, and meet a corruption."""

from __future__ import annotations

import datetime as dt
import math

import httpx
import pytest
import trio

from trio_tinkex_recovery import Config, open_service_client, set_testing
from trio_tinkex_recovery.testing import FakeTinker

KEY = "tml-simulated-training-key"
DATUM = {
    "model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
    "loss_fn_inputs": {
        "target_tokens": {"data": [2, 3], "dtype": "int64", "shape": [2]}
    },
}


@pytest.fixture(autouse=True)
def _exact_retries():
    with set_testing(True):
        yield


def service_for(fake: FakeTinker):
    return open_service_client(
        Config(api_key=KEY, base_url="https://tinker.test"), transport=fake.transport()
    )


async def test_a_new_lora_model_trains_and_saves_with_metadata(autojump_clock):
    """create_lora_training_client makes a run with no checkpoint; each
    training request moves its last_request_time; a save with metadata is
    its first checkpoint; the session lists the run."""
    fake = FakeTinker(api_key=KEY)
    async with service_for(fake) as service:
        client = await service.create_lora_training_client(
            "Qwen/Qwen3-8B", rank=8, user_metadata={"job": "j1"}
        )
        run = fake.run(client.model_id)
        assert (run.base_model, run.lora_rank, run.user_metadata) == (
            "Qwen/Qwen3-8B",
            8,
            {"job": "j1"},
        )
        assert fake.checkpoints(client.model_id) == []
        before = run.last_request_time
        await client.forward_backward([DATUM], "cross_entropy")
        await client.optim_step()
        assert fake.run(client.model_id).last_request_time > before
        saved = await client.save_state("step-0001", user_metadata={"step": "1"})
        [checkpoint] = fake.checkpoints(client.model_id)
        assert checkpoint.tinker_path == saved.tinker_path
        assert checkpoint.user_metadata == {"step": "1"}
        rest = service.create_rest_client()
        assert (
            await rest.get_training_run(client.model_id)
        ).last_checkpoint == checkpoint
        async with httpx.AsyncClient(
            transport=fake.transport(), base_url="https://tinker.test"
        ) as http:
            answer = await http.get(
                f"/api/v1/sessions/{client.session_id}", headers={"X-API-Key": KEY}
            )
        assert answer.json()["training_run_ids"] == [client.model_id]
    assert fake.sessions[client.session_id].model_ids == (client.model_id,)


@pytest.mark.parametrize("behaviour", ["hang", "succeed"])
async def test_training_requests_on_a_corrupted_model_can_hang_or_succeed(
    behaviour, autojump_clock
):
    fake = FakeTinker(api_key=KEY, corrupted_requests=behaviour)
    async with service_for(fake) as service:
        client = await service.create_lora_training_client("Qwen/Qwen3-8B")
        fake.corrupt(client.model_id)
        with trio.move_on_after(60) as scope:  # the client waits up to 600 s
            await client.forward_backward([DATUM], "cross_entropy")
    assert scope.cancelled_caught == (behaviour == "hang")


def test_corrupted_requests_is_checked():
    with pytest.raises(ValueError, match="corrupted_requests"):
        FakeTinker(corrupted_requests="explode")  # type: ignore[arg-type]


async def test_wall_clock_stamps_runs_and_checkpoints_now():
    """With wall_clock, a run's last_request_time is now (not 2025-01-01)."""
    fake = FakeTinker(wall_clock=True)
    start = dt.datetime.now(dt.UTC)
    fake.add_run("run-1")
    run = fake.run("run-1")
    assert run.last_request_time >= start
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.time is not None
    assert math.isclose(
        run.last_checkpoint.time.timestamp(), start.timestamp(), abs_tol=60
    )
