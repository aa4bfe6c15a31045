"""Training steps on the simulator: forward_backward, optim_step, saves, per model."""

from __future__ import annotations

import struct

import httpx
import pytest

from trio_tinkex_recovery.testing import FakeTinker

KEY = "tml-steps-test-0123456789"
PROTOBUF = "application/x-protobuf"


def client_of(fake):
    """An httpx client over ``fake``'s in-process transport, with an API key."""
    return httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    )


def varint(value):
    """A protobuf varint of a small number (one byte)."""
    assert 0 <= value < 128
    return bytes([value])


def length_delimited(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def forward_backward_proto(model_id, seq_id, examples, loss_fn="cross_entropy"):
    """A ForwardBackwardRequest as the SDK encodes it (tokens left out)."""
    body = length_delimited(1, model_id.encode()) + varint(2 << 3) + varint(seq_id)
    body += b"".join(length_delimited(3, b"") for _ in range(examples))
    return body + length_delimited(4, loss_fn.encode())


def forward_backward_json(model_id, seq_id, examples):
    data = [{"model_input": {"chunks": []}, "loss_fn_inputs": {}}] * examples
    return {
        "model_id": model_id,
        "seq_id": seq_id,
        "forward_backward_input": {"data": data, "loss_fn": "cross_entropy"},
        "type": "forward_backward",
    }


def optim_json(model_id, seq_id, rate=1e-4):
    return {
        "model_id": model_id,
        "seq_id": seq_id,
        "adam_params": {"learning_rate": rate, "beta1": 0.9},
        "type": "optim_step",
    }


async def result_of(client, request_id, headers=None):
    """Poll a future until it answers something other than try_again."""
    while True:
        response = await client.post(
            "/api/v1/retrieve_future",
            json={"request_id": request_id, "allow_metadata_only": False},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        if response.headers["content-type"] == PROTOBUF:
            return response.content
        if response.json().get("type") != "try_again":
            return response.json()


async def restore(client, path, *, optimizer=True):
    """Restore ``path`` in a new session: (session id, model id)."""
    session = await client.post("/api/v1/create_session", json={"tags": []})
    session_id = session.json()["session_id"]
    body = {
        "session_id": session_id,
        "model_seq_id": 0,
        "path": path,
        "optimizer": optimizer,
        "type": "load_weights",
    }
    loaded = await client.post("/api/v1/load_weights", json=body)
    await result_of(client, loaded.json()["request_id"])
    return session_id, loaded.json()["model_id"]


async def post(client, endpoint, body):
    response = await client.post(f"/api/v1/{endpoint}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


async def test_steps_recorded_in_order_with_seq_ids(autojump_clock):
    """forward_backward, optim_step and save_weights are recorded per model."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        _, model = await restore(client, "tinker://run-1/weights/ckpt-0002")
        losses = []
        for step in range(2):
            fb = await post(
                client, "forward_backward", forward_backward_json(model, 2 * step, 4)
            )
            opt = await post(client, "optim_step", optim_json(model, 2 * step + 1))
            losses.append((await result_of(client, fb))["metrics"]["loss:sum"])
            assert await result_of(client, opt) == {"metrics": {}}
        save = {
            "model_id": model,
            "path": "step-2",
            "seq_id": 4,
            "user_metadata": {"step": "2"},
            "type": "save_weights",
        }
        await result_of(client, await post(client, "save_weights", save))
    steps = fake.training_steps(model)
    assert [(s.kind, s.seq_id) for s in steps] == [
        ("forward_backward", 0),
        ("optim_step", 1),
        ("forward_backward", 2),
        ("optim_step", 3),
        ("save_weights", 4),
    ]
    assert [s.examples for s in steps[::2]] == [4, 4, 0]
    assert steps[0].loss_fn == "cross_entropy"
    assert steps[1].learning_rate == pytest.approx(1e-4)
    assert steps[4].name == "step-2"
    assert losses == [4.0, 2.0]  # the loss falls with each optimizer step
    assert fake.run(model).last_checkpoint.user_metadata == {"step": "2"}
    assert fake.training_steps("run-1") == []


async def test_protobuf_forward_backward_as_the_sdk_sends_it(autojump_clock):
    """A protobuf request is read; its result is protobuf when Accept asks."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        _, model = await restore(client, "tinker://run-1/weights/ckpt-0002")
        response = await client.post(
            "/api/v1/forward_backward",
            content=forward_backward_proto(model, 1, 3),
            headers={"content-type": PROTOBUF},
        )
        request_id = response.json()["request_id"]
        as_proto = await result_of(client, request_id, {"accept": PROTOBUF})
        as_json = await result_of(client, request_id)
    (step,) = fake.training_steps(model)
    assert (step.kind, step.seq_id, step.examples) == ("forward_backward", 1, 3)
    assert step.loss_fn == "cross_entropy"
    assert as_json["metrics"] == {"loss:sum": 3.0}
    assert len(as_json["loss_fn_outputs"]) == 3
    # loss_fn_output_type, an ArrayRecord of 3 examples, the loss metric.
    metric = length_delimited(1, b"loss:sum") + varint(2 << 3 | 1)
    metric += struct.pack("<d", 3.0)
    assert as_proto == (
        length_delimited(1, b"ArrayRecord")
        + length_delimited(2, varint(3 << 3) + varint(3))
        + length_delimited(3, metric)
    )


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"\x0a\xff", {}, 400),  # a length beyond the body
        (b"\x0f", {}, 400),  # wire type 7
        (b"", {"content-encoding": "zstd"}, 415),
    ],
)
async def test_protobuf_bodies_checked(content, headers, status, autojump_clock):
    """A protobuf body the simulator cannot read is refused, nothing recorded."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        response = await client.post(
            "/api/v1/forward_backward",
            content=content,
            headers={"content-type": PROTOBUF, **headers},
        )
    assert response.status_code == status
    assert fake.training_steps("run-1") == []


async def test_retry_with_the_same_seq_id_acts_once(autojump_clock):
    """A repeat of a seq_id answers the first future; another request is 400."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        first = await post(client, "optim_step", optim_json("run-1", 7))
        again = await post(client, "optim_step", optim_json("run-1", 7))
        other = await client.post("/api/v1/optim_step", json=optim_json("run-1", 7, 1))
        reused = await client.post(
            "/api/v1/forward_backward", json=forward_backward_json("run-1", 7, 1)
        )
    assert first == again
    assert (other.status_code, reused.status_code) == (400, 400)
    assert "seq_id 7" in other.json()["detail"]
    assert len(fake.training_steps("run-1")) == 1


async def test_requests_to_a_superseded_model_work_and_are_marked(autojump_clock):
    """After a restore from a model, requests to it still work, marked superseded."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        before = await post(client, "optim_step", optim_json("run-1", 1))
        _, model = await restore(client, "tinker://run-1/weights/ckpt-0002")
        after = await post(client, "optim_step", optim_json("run-1", 2))
        assert await result_of(client, after) == {"metrics": {}}
        await post(client, "optim_step", optim_json(model, 1))
    old = fake.training_steps("run-1")
    assert [(s.request_id, s.superseded_by) for s in old] == [
        (before, None),
        (after, model),
    ]
    assert [s.superseded_by for s in fake.training_steps(model)] == [None]


async def test_requests_after_the_session_finished_work_and_are_marked(
    autojump_clock,
):
    """A model whose session finished still trains; its steps say so."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        session_id, model = await restore(client, "tinker://run-1/weights/ckpt-0002")
        await post(client, "optim_step", optim_json(model, 1))
        await client.post(f"/api/v1/sessions/{session_id}/finish", json={})
        late = await post(client, "optim_step", optim_json(model, 2))
        assert await result_of(client, late) == {"metrics": {}}
    assert [s.session_finished for s in fake.training_steps(model)] == [False, True]


async def test_corrupted_or_unknown_models(autojump_clock):
    """A corrupted model's step fails as a server error; an unknown model is 404."""
    fake = FakeTinker()
    fake.add_run("run-1", corrupted=True)
    async with client_of(fake) as client:
        failed = await post(
            client, "forward_backward", forward_backward_json("run-1", 1, 2)
        )
        result = await result_of(client, failed)
        missing = await client.post("/api/v1/optim_step", json=optim_json("ghost", 1))
    assert result["category"] == "server"
    assert "corrupted" in result["error"]
    assert missing.status_code == 404
    assert [s.kind for s in fake.training_steps("run-1")] == ["forward_backward"]
    with pytest.raises(KeyError):
        fake.training_steps("ghost")


async def test_restore_of_tells_the_optimizer_state(autojump_clock):
    """restore_of says how a model was restored; None for runs added directly."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        _, full = await restore(client, "tinker://run-1/weights/ckpt-0002")
        _, plain = await restore(
            client, "tinker://run-1/weights/ckpt-0001", optimizer=False
        )
    assert fake.restore_of(full).optimizer is True
    assert fake.restore_of(plain).optimizer is False
    assert fake.restore_of(plain).tinker_path == "tinker://run-1/weights/ckpt-0001"
    assert fake.restore_of("run-1") is None


async def test_a_step_makes_the_model_recent(autojump_clock):
    """A training step updates last_request_time, so the list shows it first."""
    fake = FakeTinker()
    fake.add_run("run-1")
    fake.add_run("run-2")
    async with client_of(fake) as client:
        await post(client, "optim_step", optim_json("run-1", 1))
        listed = (await client.get("/api/v1/training_runs")).json()
    assert [r["training_run_id"] for r in listed["training_runs"]] == ["run-1", "run-2"]
