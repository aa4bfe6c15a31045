"""The simulator in process: endpoints, idempotency, faults, the request log."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
import trio

import trio_tinkex_recovery.testing as testing
from trio_tinkex_recovery import Checkpoint, TrainingRun, WeightsInfo
from trio_tinkex_recovery.testing import FakeTinker, Fault

KEY = "tml-test-key-0123456789"
PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def client(fake_tinker, fake_tinker_transport):
    """An httpx client over the in-process transport, with an API key."""
    async with httpx.AsyncClient(
        transport=fake_tinker_transport,
        base_url="http://fake-tinker",
        headers={"X-API-Key": KEY},
    ) as client:
        yield client


async def new_session(client):
    response = await client.post(
        "/api/v1/create_session",
        json={"tags": ["t"], "user_metadata": {"who": "me"}, "sdk_version": "0.38.0"},
    )
    assert response.status_code == 200
    return response.json()["session_id"]


async def load(client, session_id, path, *, seq=0, optimizer=False, headers=None):
    body = {
        "session_id": session_id,
        "model_seq_id": seq,
        "path": path,
        "optimizer": optimizer,
        "type": "load_weights",
    }
    return await client.post("/api/v1/load_weights", json=body, headers=headers)


async def result_of(client, request_id):
    """Poll retrieve_future until it answers something other than try_again."""
    polls = 0
    while True:
        polls += 1
        response = await client.post(
            "/api/v1/retrieve_future",
            json={"request_id": request_id, "allow_metadata_only": True},
        )
        assert response.status_code == 200
        body = response.json()
        if body.get("type") != "try_again":
            return body, polls


def test_exports_sorted():
    """The package's __all__ is sorted and names what it exports."""
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert hasattr(testing, name)


async def test_send_json_answers_for_a_middleware(fake_tinker, autojump_clock):
    """send_json answers an ASGI request with JSON, its length and extra headers."""

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/teapot":
            await testing.send_json(send, 418, {"tea": "é"}, [("x-extra", "1")])
        else:
            await fake_tinker.app(scope, receive, send)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://f"
    ) as client:
        teapot = await client.get("/teapot")
        passed = await client.get("/api/v1/healthz", headers={"X-API-Key": KEY})
    assert (teapot.status_code, teapot.json()) == (418, {"tea": "é"})
    assert teapot.headers["content-type"] == "application/json"
    assert teapot.headers["content-length"] == str(len(teapot.content))
    assert teapot.headers["x-extra"] == "1"
    assert passed.json() == {"status": "ok"}


# --- runs and checkpoints ----------------------------------------------------


async def test_get_training_run_shape(fake_tinker, client, autojump_clock):
    """GET training_runs answers a valid TrainingRun; the last checkpoint is last."""
    fake_tinker.add_run(
        "run-1",
        lora_rank=16,
        checkpoints=["a", "b", "c"],
        user_metadata={"team": "x"},
    )
    response = await client.get(
        "/api/v1/training_runs/run-1", params={"access_scope": "owned"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    run = TrainingRun.from_json(response.json())
    assert run.training_run_id == "run-1"
    assert run.base_model == "Qwen/Qwen3-8B"
    assert (run.is_lora, run.lora_rank) == (True, 16)
    assert run.corrupted is False
    assert run.model_owner == "fake-user"
    assert run.user_metadata == {"team": "x"}
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == "tinker://run-1/weights/c"
    assert run.last_checkpoint.checkpoint_id == "weights/c"
    assert run.last_sampler_checkpoint is None
    assert fake_tinker.run("run-1") == run


async def test_corrupt_shows_on_next_get(fake_tinker, client, autojump_clock):
    """corrupt() flips the flag the next GET reports; it can be healed."""
    fake_tinker.add_run("run-1")
    assert (await client.get("/api/v1/training_runs/run-1")).json()[
        "corrupted"
    ] is False
    fake_tinker.corrupt("run-1")
    assert (await client.get("/api/v1/training_runs/run-1")).json()["corrupted"] is True
    fake_tinker.corrupt("run-1", corrupted=False)
    assert (await client.get("/api/v1/training_runs/run-1")).json()[
        "corrupted"
    ] is False


async def test_full_fine_tune_run(fake_tinker, client, autojump_clock):
    """A run without LoRA reports is_lora false and no rank."""
    fake_tinker.add_run("full", lora_rank=None, checkpoints=[])
    run = TrainingRun.from_json((await client.get("/api/v1/training_runs/full")).json())
    assert (run.is_lora, run.lora_rank, run.last_checkpoint) == (False, None, None)


async def test_unknown_run_is_404_json(client, autojump_clock):
    """An unknown run answers 404 with a JSON detail and a Content-Length."""
    response = await client.get("/api/v1/training_runs/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]
    assert int(response.headers["content-length"]) == len(response.content)


async def test_list_checkpoints_shape(fake_tinker, client, autojump_clock):
    """The listing holds every live checkpoint, oldest first, valid on the wire."""
    fake_tinker.add_run("run-1", checkpoints=["c1", "c2"])
    fake_tinker.add_checkpoint("run-1", "c3", metadata={"loss": "0.5"})
    fake_tinker.add_checkpoint("run-1", "s1", checkpoint_type="sampler")
    response = await client.get("/api/v1/training_runs/run-1/checkpoints")
    body = response.json()
    checkpoints = [Checkpoint.from_json(c) for c in body["checkpoints"]]
    assert [c.tinker_path for c in checkpoints] == [
        "tinker://run-1/weights/c1",
        "tinker://run-1/weights/c2",
        "tinker://run-1/weights/c3",
        "tinker://run-1/sampler_weights/s1",
    ]
    times = [c.time for c in checkpoints]
    assert times == sorted(times)
    assert len(set(times)) == 4
    assert checkpoints[2].user_metadata == {"loss": "0.5"}
    assert checkpoints[3].checkpoint_type == "sampler"
    assert body["cursor"]["total_count"] == 4
    assert fake_tinker.checkpoints("run-1") == checkpoints
    run = TrainingRun.from_json(
        (await client.get("/api/v1/training_runs/run-1")).json()
    )
    assert run.last_checkpoint == checkpoints[2]
    assert run.last_sampler_checkpoint == checkpoints[3]


async def test_list_checkpoints_unknown_run(client, autojump_clock):
    """Listing an unknown run's checkpoints answers 404."""
    assert (await client.get("/api/v1/training_runs/x/checkpoints")).status_code == 404


async def test_deleted_and_expired_checkpoints(fake_tinker, client, autojump_clock):
    """A deleted checkpoint leaves the listing; an expired one shows its expiry."""
    fake_tinker.add_run("run-1", checkpoints=["c1", "c2", "c3"])
    fake_tinker.delete_checkpoint("tinker://run-1/weights/c3")
    fake_tinker.expire_checkpoint("tinker://run-1/weights/c1")
    listing = fake_tinker.checkpoints("run-1")
    assert [c.checkpoint_id for c in listing] == ["weights/c1", "weights/c2"]
    assert listing[0].is_expired()
    assert not listing[1].is_expired()
    run = TrainingRun.from_json(
        (await client.get("/api/v1/training_runs/run-1")).json()
    )
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.checkpoint_id == "weights/c2"


async def test_delete_checkpoint_endpoint(fake_tinker, client, autojump_clock):
    """DELETE on a checkpoint removes it; a second DELETE answers 404."""
    fake_tinker.add_run("run-1", checkpoints=["c1", "c2"])
    path = "/api/v1/training_runs/run-1/checkpoints/weights/c2"
    assert (await client.delete(path)).status_code == 200
    assert [c.checkpoint_id for c in fake_tinker.checkpoints("run-1")] == ["weights/c1"]
    assert (await client.delete(path)).status_code == 404


async def test_weights_info(fake_tinker, client, autojump_clock):
    """weights_info describes a checkpoint's run; 404 if missing, 410 if expired."""
    fake_tinker.add_run("run-1", lora_rank=8, checkpoints=["c1", "c2"])
    response = await client.post(
        "/api/v1/weights_info", json={"tinker_path": "tinker://run-1/weights/c1"}
    )
    info = WeightsInfo.from_json(response.json())
    assert (info.base_model, info.is_lora, info.lora_rank) == ("Qwen/Qwen3-8B", True, 8)
    assert fake_tinker.weights_info("tinker://run-1/weights/c1") == info
    missing = await client.post(
        "/api/v1/weights_info", json={"tinker_path": "tinker://run-1/weights/zz"}
    )
    assert missing.status_code == 404
    fake_tinker.expire_checkpoint("tinker://run-1/weights/c2")
    expired = await client.post(
        "/api/v1/weights_info", json={"tinker_path": "tinker://run-1/weights/c2"}
    )
    assert expired.status_code == 410
    unparsable = await client.post("/api/v1/weights_info", json={"tinker_path": 3})
    assert unparsable.status_code == 422


async def test_checkpoint_times_are_logical(autojump_clock):
    """Wire timestamps start at the epoch and advance a minute per event."""
    fake = FakeTinker(epoch=dt.datetime(2030, 5, 1, tzinfo=dt.UTC))
    fake.add_run("run-1", checkpoints=["c1"])
    (ckpt,) = fake.checkpoints("run-1")
    assert ckpt.time == dt.datetime(2030, 5, 1, 0, 2, tzinfo=dt.UTC)


# --- client set-up and sessions ---------------------------------------------------


async def test_client_config_and_dynamic_config(client, autojump_clock):
    """client/config answers {}; dynamic_config answers 404 by default."""
    config = await client.post("/api/v1/client/config", json={"sdk_version": "0.38.0"})
    assert (config.status_code, config.json()) == (200, {})
    dynamic = await client.post(
        "/api/v1/client/dynamic_config", json={"sdk_version": "0.38.0"}
    )
    assert dynamic.status_code == 404


async def test_configured_client_config(autojump_clock):
    """Both config answers can be set."""
    fake = FakeTinker(
        client_config={"use_pyqwest_transport": False},
        dynamic_config={"refresh_interval_sec": 60},
    )
    async with httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    ) as client:
        config = await client.post("/api/v1/client/config", json={"sdk_version": "1"})
        dynamic = await client.post(
            "/api/v1/client/dynamic_config", json={"sdk_version": "1"}
        )
    assert config.json() == {"use_pyqwest_transport": False}
    assert dynamic.json() == {"refresh_interval_sec": 60}


async def test_session_lifecycle(fake_tinker, client, autojump_clock):
    """create_session, heartbeats, finish; a finished session answers 410."""
    session_id = await new_session(client)
    for _ in range(2):
        beat = await client.post(
            "/api/v1/session_heartbeat",
            json={"session_id": session_id, "type": "session_heartbeat"},
        )
        assert beat.json() == {"type": "session_heartbeat"}
    finish = await client.post(
        f"/api/v1/sessions/{session_id}/finish",
        json={"reason": {"type": "errored"}, "detail": "boom"},
    )
    assert finish.status_code == 200
    info = fake_tinker.sessions[session_id]
    assert (info.heartbeats, info.finished) == (2, "errored")
    assert (info.tags, info.user_metadata) == (("t",), {"who": "me"})
    late = await client.post(
        "/api/v1/session_heartbeat", json={"session_id": session_id}
    )
    assert late.status_code == 410
    unknown = await client.post("/api/v1/session_heartbeat", json={"session_id": "x"})
    assert unknown.status_code == 404
    assert (await client.post("/api/v1/sessions/x/finish", json={})).status_code == 404


async def test_telemetry_accepted(fake_tinker, client, autojump_clock):
    """Telemetry batches are accepted and counted."""
    response = await client.post("/api/v1/telemetry", json={"events": []})
    assert response.json() == {"status": "accepted"}
    assert fake_tinker.telemetry_batches == 1


async def test_healthz(client, autojump_clock):
    """The health check answers ok."""
    assert (await client.get("/api/v1/healthz")).json() == {"status": "ok"}


# --- restores ---------------------------------------------------------------------


async def test_load_weights_restores_a_new_run(fake_tinker, client, autojump_clock):
    """load_weights → try_again → result; the model becomes a run of its own."""
    fake_tinker.add_run("run-1", lora_rank=16, checkpoints=["c1", "c2"])
    fake_tinker.corrupt("run-1")
    session_id = await new_session(client)
    start = trio.current_time()
    response = await load(
        client, session_id, "tinker://run-1/weights/c1", seq=3, optimizer=True
    )
    future = response.json()
    model_id = f"{session_id}:train:3"
    assert future["model_id"] == model_id
    body, polls = await result_of(client, future["request_id"])
    assert body == {
        "type": "load_weights",
        "path": "tinker://run-1/weights/c1",
        "model_id": model_id,
    }
    assert polls == 2  # one try_again by default
    assert trio.current_time() - start == pytest.approx(0.05)  # one long-poll
    restored = TrainingRun.from_json(
        (await client.get(f"/api/v1/training_runs/{model_id}")).json()
    )
    assert restored.training_run_id == model_id
    assert (restored.base_model, restored.lora_rank) == ("Qwen/Qwen3-8B", 16)
    assert restored.corrupted is False
    assert restored.last_checkpoint is not None
    assert restored.last_checkpoint.tinker_path == "tinker://run-1/weights/c1"
    assert fake_tinker.restores == {"run-1": 1}
    assert fake_tinker.restore_count("run-1") == 1
    (restore,) = fake_tinker.restore_log
    assert (restore.model_id, restore.optimizer, restore.session_id) == (
        model_id,
        True,
        session_id,
    )
    assert fake_tinker.sessions[session_id].model_ids == (model_id,)
    assert model_id in fake_tinker.run_ids


@pytest.mark.parametrize(
    ("prepare", "path", "needle"),
    [
        (None, "tinker://run-1/weights/zz", "not found"),
        (None, "tinker://ghost/weights/c1", "not found"),
        (None, "not-a-path", "invalid checkpoint path"),
        ("expire", "tinker://run-1/weights/c1", "expired"),
        ("delete", "tinker://run-1/weights/c1", "not found"),
        ("sampler", "tinker://run-1/sampler_weights/s1", "sampler"),
    ],
)
async def test_unrestorable_checkpoint_fails_as_user_error(
    fake_tinker, client, autojump_clock, prepare, path, needle
):
    """A missing, expired, deleted or sampler checkpoint fails with category user."""
    fake_tinker.add_run("run-1", checkpoints=["c1"])
    fake_tinker.add_checkpoint("run-1", "s1", checkpoint_type="sampler")
    if prepare == "expire":
        fake_tinker.expire_checkpoint(path)
    elif prepare == "delete":
        fake_tinker.delete_checkpoint(path)
    session_id = await new_session(client)
    future = (await load(client, session_id, path)).json()
    body, _ = await result_of(client, future["request_id"])
    assert body["category"] == "user"
    assert needle in body["error"]
    assert fake_tinker.restores == {}
    assert fake_tinker.sessions[session_id].model_ids == ()
    assert f"{session_id}:train:0" not in fake_tinker.run_ids


async def test_checkpoint_expiring_in_the_past(fake_tinker, client, autojump_clock):
    """A checkpoint added with a past expires_at cannot be restored."""
    fake_tinker.add_run("run-1", checkpoints=[])
    fake_tinker.add_checkpoint("run-1", "old", expires_at=PAST)
    session_id = await new_session(client)
    future = (await load(client, session_id, "tinker://run-1/weights/old")).json()
    body, _ = await result_of(client, future["request_id"])
    assert body["category"] == "user"


async def test_load_weights_validates_session(fake_tinker, client, autojump_clock):
    """An unknown session is 404, a finished one 410, a bad body 422."""
    fake_tinker.add_run("run-1")
    path = "tinker://run-1/weights/ckpt-0001"
    assert (await load(client, "nope", path)).status_code == 404
    session_id = await new_session(client)
    await client.post(f"/api/v1/sessions/{session_id}/finish", json={})
    assert (await load(client, session_id, path)).status_code == 410
    session_id = await new_session(client)
    bad = await client.post(
        "/api/v1/load_weights", json={"session_id": session_id, "path": path}
    )
    assert bad.status_code == 422
    legacy = await client.post(
        "/api/v1/load_weights",
        json={"model_id": "m", "seq_id": 1, "path": path, "optimizer": False},
    )
    assert legacy.status_code == 422
    assert fake_tinker.restores == {}


async def test_load_weights_same_seq_is_one_model(fake_tinker, client, autojump_clock):
    """Repeating (session, model_seq_id) answers the same future; one restore."""
    fake_tinker.add_run("run-1")
    session_id = await new_session(client)
    path = "tinker://run-1/weights/ckpt-0002"
    first = (await load(client, session_id, path)).json()
    again = (await load(client, session_id, path)).json()
    assert again == first
    assert fake_tinker.restores == {"run-1": 1}
    other = await load(client, session_id, "tinker://run-1/weights/ckpt-0001")
    assert other.status_code == 400
    second = (await load(client, session_id, path, seq=1)).json()
    assert second["model_id"] == f"{session_id}:train:1"
    assert fake_tinker.restores == {"run-1": 2}


async def test_get_info(fake_tinker, client, autojump_clock):
    """get_info describes a model; unknown models are 404."""
    fake_tinker.add_run("run-1", lora_rank=4)
    response = await client.post(
        "/api/v1/get_info", json={"model_id": "run-1", "type": "get_info"}
    )
    body = response.json()
    assert body["model_id"] == "run-1"
    assert (body["is_lora"], body["lora_rank"]) == (True, 4)
    assert body["model_data"]["model_name"] == "Qwen/Qwen3-8B"
    missing = await client.post("/api/v1/get_info", json={"model_id": "x"})
    assert missing.status_code == 404


async def test_retrieve_unknown_future(client, autojump_clock):
    """An unknown request id is 404."""
    response = await client.post("/api/v1/retrieve_future", json={"request_id": "x"})
    assert response.status_code == 404


async def timed_restore(fake):
    """Restore a checkpoint of run-1 and poll its future: (result, polls, seconds)."""
    fake.add_run("run-1")
    async with httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    ) as client:
        session_id = await new_session(client)
        start = trio.current_time()
        future = (
            await load(client, session_id, "tinker://run-1/weights/ckpt-0001")
        ).json()
        body, polls = await result_of(client, future["request_id"])
    return body, polls, trio.current_time() - start


async def test_future_delay_long_polls_until_ready(autojump_clock):
    """With a delay, polls long-poll in Trio time and wake when the result is ready."""
    fake = FakeTinker(future_try_again=0, future_delay=1.0, long_poll=0.4)
    body, polls, elapsed = await timed_restore(fake)
    assert body["type"] == "load_weights"
    assert polls == 3  # 0.4 + 0.4 (try_again each), then wakes at 1.0
    assert elapsed == pytest.approx(1.0)


async def test_future_without_waiting(autojump_clock):
    """With no try_again and no delay the first poll answers at once."""
    _, polls, elapsed = await timed_restore(FakeTinker(future_try_again=0))
    assert (polls, elapsed) == (1, 0)


# --- saves --------------------------------------------------------------------------


async def save(client, model_id, name, *, seq=1, endpoint="save_weights", **extra):
    body = {"model_id": model_id, "path": name, "seq_id": seq, "type": endpoint}
    body.update(extra)
    return await client.post(f"/api/v1/{endpoint}", json=body)


async def test_save_weights_becomes_last_checkpoint(
    fake_tinker, client, autojump_clock
):
    """A saved training checkpoint is listed and becomes the run's last_checkpoint."""
    fake_tinker.add_run("run-1")
    session_id = await new_session(client)
    future = (await load(client, session_id, "tinker://run-1/weights/ckpt-0002")).json()
    await result_of(client, future["request_id"])
    model_id = future["model_id"]
    saved = (
        await save(client, model_id, "step-10", user_metadata={"loss": "1"})
    ).json()
    body, _ = await result_of(client, saved["request_id"])
    path = f"tinker://{model_id}/weights/step-10"
    assert body == {"type": "save_weights", "path": path}
    run = fake_tinker.run(model_id)
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == path
    (ckpt,) = fake_tinker.checkpoints(model_id)
    assert (ckpt.tinker_path, ckpt.user_metadata) == (path, {"loss": "1"})
    assert ckpt.time is not None
    assert ckpt.time > fake_tinker.checkpoints("run-1")[-1].time  # type: ignore[operator]


async def test_save_weights_rules(fake_tinker, client, autojump_clock):
    """Duplicate names need overwrite, seq_ids dedupe, corrupted models fail."""
    fake_tinker.add_run("run-1", checkpoints=["c1"])
    first = (await save(client, "run-1", "c1", seq=1)).json()
    body, _ = await result_of(client, first["request_id"])
    assert body["category"] == "user"
    again = (await save(client, "run-1", "c1", seq=1)).json()
    assert again == first
    assert (await save(client, "run-1", "other", seq=1)).status_code == 400
    overwrite = (await save(client, "run-1", "c1", seq=2, overwrite=True)).json()
    body, _ = await result_of(client, overwrite["request_id"])
    assert body["path"] == "tinker://run-1/weights/c1"
    assert len(fake_tinker.checkpoints("run-1")) == 1
    fake_tinker.corrupt("run-1")
    broken = (await save(client, "run-1", "c9", seq=3)).json()
    body, _ = await result_of(client, broken["request_id"])
    assert body["category"] == "server"
    assert (await save(client, "ghost", "c1")).status_code == 404


async def test_save_weights_ttl_sets_expiry(fake_tinker, client, autojump_clock):
    """ttl_seconds gives the checkpoint an expires_at that many seconds after
    it was saved (on the wall clock, as the service's)."""
    fake_tinker.add_run("run-1", checkpoints=[])
    before = dt.datetime.now(dt.UTC)
    future = (await save(client, "run-1", "c1", ttl_seconds=3600)).json()
    await result_of(client, future["request_id"])
    after = dt.datetime.now(dt.UTC)
    (ckpt,) = fake_tinker.checkpoints("run-1")
    assert ckpt.expires_at is not None
    ttl = dt.timedelta(seconds=3600)
    assert before + ttl <= ckpt.expires_at <= after + ttl
    assert not ckpt.is_expired()


async def test_save_weights_for_sampler(fake_tinker, client, autojump_clock):
    """Sampler saves land under sampler_weights and in last_sampler_checkpoint."""
    fake_tinker.add_run("run-1")
    future = (
        await save(client, "run-1", "s1", endpoint="save_weights_for_sampler")
    ).json()
    body, _ = await result_of(client, future["request_id"])
    assert body == {
        "type": "save_weights_for_sampler",
        "path": "tinker://run-1/sampler_weights/s1",
    }
    run = fake_tinker.run("run-1")
    assert run.last_sampler_checkpoint is not None
    assert run.last_sampler_checkpoint.checkpoint_type == "sampler"
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.checkpoint_id == "weights/ckpt-0002"


# --- auth, routing, bodies ----------------------------------------------------------


async def test_missing_api_key_is_401(fake_tinker, autojump_clock):
    """Requests without X-API-Key answer 401 with a JSON detail."""
    fake_tinker.add_run("run-1")
    async with httpx.AsyncClient(
        transport=fake_tinker.transport(), base_url="http://f"
    ) as client:
        response = await client.get("/api/v1/training_runs/run-1")
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]


async def test_configured_api_key_is_enforced(autojump_clock):
    """With api_key set, other keys answer 401."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1")
    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://f") as c:
        wrong = await c.get(
            "/api/v1/training_runs/run-1", headers={"X-API-Key": "tml-x"}
        )
        right = await c.get("/api/v1/training_runs/run-1", headers={"X-API-Key": KEY})
    assert (wrong.status_code, right.status_code) == (401, 200)


async def test_unknown_endpoint_and_method(client, autojump_clock):
    """Unknown paths answer 404, known paths with another method 405."""
    assert (await client.get("/api/v1/nothing")).status_code == 404
    wrong = await client.get("/api/v1/load_weights")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


async def test_bad_request_bodies(client, autojump_clock):
    """A body that is not JSON is 400; JSON that is not an object is 422."""
    not_json = await client.post(
        "/api/v1/create_session",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 400
    not_object = await client.post("/api/v1/create_session", json=[1, 2])
    assert not_object.status_code == 422
    empty = await client.post("/api/v1/get_info")
    assert empty.status_code == 422


# --- idempotency --------------------------------------------------------------------


async def test_idempotency_key_replays_first_answer(
    fake_tinker, client, autojump_clock
):
    """A repeated key returns the first answer and does not act again."""
    fake_tinker.add_run("run-1")
    headers = {"X-Idempotency-Key": "key-1"}
    first = await client.post(
        "/api/v1/create_session", json={"tags": []}, headers=headers
    )
    again = await client.post(
        "/api/v1/create_session", json={"tags": []}, headers=headers
    )
    assert again.json() == first.json()
    assert len(fake_tinker.sessions) == 1
    assert fake_tinker.idempotent_replays == 1
    other = await client.post(
        "/api/v1/create_session", json={"tags": []}, headers={"X-Idempotency-Key": "k2"}
    )
    assert other.json() != first.json()
    assert len(fake_tinker.sessions) == 2


async def test_idempotency_key_with_another_body(fake_tinker, client, autojump_clock):
    """Reusing a key with a different body is refused with 422."""
    headers = {"X-Idempotency-Key": "key-1"}
    await client.post("/api/v1/create_session", json={"tags": []}, headers=headers)
    reused = await client.post(
        "/api/v1/create_session", json={"tags": ["x"]}, headers=headers
    )
    assert reused.status_code == 422
    assert len(fake_tinker.sessions) == 1


async def test_idempotent_restore_counts_once(fake_tinker, client, autojump_clock):
    """Two load_weights with the same key restore one model."""
    fake_tinker.add_run("run-1")
    session_id = await new_session(client)
    headers = {"X-Idempotency-Key": "load-1"}
    path = "tinker://run-1/weights/ckpt-0002"
    first = await load(client, session_id, path, headers=headers)
    again = await load(client, session_id, path, headers=headers)
    assert first.json() == again.json()
    assert fake_tinker.restores == {"run-1": 1}


async def test_get_requests_are_not_cached(fake_tinker, client, autojump_clock):
    """GETs with an idempotency key still see fresh state."""
    fake_tinker.add_run("run-1")
    headers = {"X-Idempotency-Key": "same"}
    before = await client.get("/api/v1/training_runs/run-1", headers=headers)
    fake_tinker.corrupt("run-1")
    after = await client.get("/api/v1/training_runs/run-1", headers=headers)
    assert (before.json()["corrupted"], after.json()["corrupted"]) == (False, True)


async def test_concurrent_requests_with_one_key_act_once(fake_tinker, autojump_clock):
    """A key seen while its first request is in flight waits for that answer."""
    fake = FakeTinker(future_try_again=3, long_poll=1.0)
    fake.add_run("run-1")
    answers = []
    async with httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    ) as client:
        session_id = await new_session(client)
        future = (
            await load(client, session_id, "tinker://run-1/weights/ckpt-0001")
        ).json()

        async def poll():
            response = await client.post(
                "/api/v1/retrieve_future",
                json={"request_id": future["request_id"]},
                headers={"X-Idempotency-Key": "poll-1"},
            )
            answers.append(response.json())

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            nursery.start_soon(poll)
        assert trio.current_time() - start == pytest.approx(1.0)
        assert answers[0] == answers[1]
        assert answers[0]["type"] == "try_again"
        assert fake.idempotent_replays == 1
        # Only one of the two polls consumed a try_again.
        _, polls = await result_of(client, future["request_id"])
        assert polls == 3


async def test_idempotency_entry_dropped_when_not_answered(fake_tinker, autojump_clock):
    """A request cancelled before answering leaves its key free for a retry."""
    fake = FakeTinker(future_try_again=1, long_poll=10.0)
    fake.add_run("run-1")
    async with httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    ) as client:
        session_id = await new_session(client)
        future = (
            await load(client, session_id, "tinker://run-1/weights/ckpt-0001")
        ).json()
        body = {"request_id": future["request_id"]}
        headers = {"X-Idempotency-Key": "poll"}
        with trio.move_on_after(1):
            await client.post("/api/v1/retrieve_future", json=body, headers=headers)
        retried = await client.post(
            "/api/v1/retrieve_future", json=body, headers=headers
        )
    assert retried.json()["type"] == "try_again"
    assert fake.idempotent_replays == 0


# --- faults -------------------------------------------------------------------------


async def test_latency_fault_uses_trio_time(fake_tinker, client, autojump_clock):
    """A latency fault delays the answer by exactly its delay in Trio time."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(Fault.latency(7.5))
    start = trio.current_time()
    response = await client.get("/api/v1/training_runs/run-1")
    assert response.status_code == 200
    assert trio.current_time() - start == 7.5


async def test_base_latency(autojump_clock):
    """base_latency delays every request."""
    fake = FakeTinker(base_latency=0.25)
    fake.add_run("run-1")
    async with httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    ) as client:
        start = trio.current_time()
        await client.get("/api/v1/training_runs/run-1")
        await client.get("/api/v1/training_runs/run-1")
    assert trio.current_time() - start == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        (Fault.server_error(), 503, None),
        (Fault.server_error(500), 500, None),
        (Fault.rate_limit(2.5), 429, "2.5"),
        (Fault.rate_limit(3), 429, "3"),
        (Fault.request_timeout(), 408, None),
        (Fault.status_code(409), 409, None),
    ],
)
async def test_status_faults(
    fake_tinker, client, autojump_clock, fault, status, retry_after
):
    """Status faults answer their status with a JSON body and do not act."""
    fake_tinker.script(fault)
    response = await client.post("/api/v1/create_session", json={"tags": []})
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert "detail" in response.json()
    assert fake_tinker.sessions == {}
    assert fake_tinker.requests[-1].fault == "status"


async def test_drop_before_action(fake_tinker, client, autojump_clock):
    """A drop before acting raises a transport error; nothing happened."""
    fake_tinker.add_run("run-1")
    session_id = await new_session(client)
    fake_tinker.script(Fault.drop(after_action=False, path="/api/v1/load_weights"))
    with pytest.raises(httpx.RemoteProtocolError) as caught:
        await load(client, session_id, "tinker://run-1/weights/ckpt-0001")
    assert caught.value.request.method == "POST"
    assert caught.value.request.url == "http://fake-tinker/api/v1/load_weights"
    assert fake_tinker.restores == {}


async def test_drop_after_action_then_retry(fake_tinker, client, autojump_clock):
    """A lost response: the restore happened; a retry with the key replays it."""
    fake_tinker.add_run("run-1")
    session_id = await new_session(client)
    fake_tinker.script(Fault.drop(path="/api/v1/load_weights"))
    headers = {"X-Idempotency-Key": "load-1"}
    path = "tinker://run-1/weights/ckpt-0001"
    with pytest.raises(httpx.TransportError):
        await load(client, session_id, path, headers=headers)
    assert fake_tinker.restores == {"run-1": 1}
    retried = await load(client, session_id, path, headers=headers)
    assert retried.status_code == 200
    assert retried.json()["model_id"] == f"{session_id}:train:0"
    assert fake_tinker.restores == {"run-1": 1}
    assert fake_tinker.idempotent_replays == 1


async def test_malformed_fault(fake_tinker, client, autojump_clock):
    """A malformed answer is 200 with a body that is not JSON."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(Fault.malformed())
    response = await client.get("/api/v1/training_runs/run-1")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_truncated_fault(fake_tinker, client, autojump_clock):
    """A truncated answer is the first half of the real JSON body."""
    fake_tinker.add_run("run-1")
    full = (await client.get("/api/v1/training_runs/run-1")).content
    fake_tinker.script(Fault.truncated())
    response = await client.get("/api/v1/training_runs/run-1")
    assert response.content == full[: len(full) // 2]
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_missing_fields_fault(fake_tinker, client, autojump_clock):
    """missing_fields removes the named fields (or the first one)."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(
        Fault.missing_fields("base_model", "is_lora"), Fault.missing_fields()
    )
    named = (await client.get("/api/v1/training_runs/run-1")).json()
    assert "base_model" not in named
    assert "is_lora" not in named
    assert named["training_run_id"] == "run-1"
    first = (await client.get("/api/v1/training_runs/run-1")).json()
    assert "training_run_id" not in first
    assert "base_model" in first


async def test_spoiling_faults_leave_errors_alone(fake_tinker, client, autojump_clock):
    """Faults that spoil a body only touch successful answers."""
    fake_tinker.script(Fault.malformed())
    response = await client.get("/api/v1/training_runs/ghost")
    assert response.status_code == 404
    assert response.json()["detail"]


async def test_scripted_faults_match_and_run_in_order(
    fake_tinker, client, autojump_clock
):
    """Each scripted fault strikes the next request it matches, once."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(
        Fault.server_error(method="POST"),
        Fault.rate_limit(path="/api/v1/training_runs/run-1/checkpoints"),
        Fault.server_error(502, path="/api/v1/training_runs"),
    )
    statuses = [
        (await client.get("/api/v1/training_runs/run-1/checkpoints")).status_code,
        (await client.get("/api/v1/training_runs/run-1/checkpoints")).status_code,
        (await client.get("/api/v1/training_runs/run-1")).status_code,
        (await client.post("/api/v1/create_session", json={})).status_code,
        (await client.post("/api/v1/create_session", json={})).status_code,
    ]
    assert statuses == [429, 502, 200, 503, 200]


async def test_fault_rates_are_seeded(autojump_clock):
    """Rate faults follow the seed: the same seed strikes the same requests."""

    async def pattern(seed):
        fake = FakeTinker(seed=seed)
        fake.add_run("run-1")
        fake.add_fault_rate(Fault.server_error(path="/api/v1/training_runs"), 0.3)
        async with httpx.AsyncClient(
            transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
        ) as client:
            codes = []
            for _ in range(40):
                codes.append(
                    (await client.get("/api/v1/training_runs/run-1")).status_code
                )
            ok = await client.post("/api/v1/client/config", json={})
            assert ok.status_code == 200  # not matched by the rule
        return codes

    first, again, other = await pattern(1), await pattern(1), await pattern(2)
    assert first == again
    assert first != other
    assert 0 < first.count(503) < 40


async def test_clear_faults(fake_tinker, client, autojump_clock):
    """clear_faults drops the script and the rates."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(Fault.server_error())
    fake_tinker.add_fault_rate(Fault.server_error(), 1.0)
    fake_tinker.clear_faults()
    assert (await client.get("/api/v1/training_runs/run-1")).status_code == 200


def test_fault_validation():
    """Fault factories and rates reject nonsense, naming the field."""
    with pytest.raises(ValueError, match="seconds"):
        Fault.latency(-1)
    with pytest.raises(ValueError, match="status"):
        Fault.status_code(200)
    with pytest.raises(ValueError, match="5xx"):
        Fault.server_error(429)
    with pytest.raises(ValueError, match="retry_after"):
        Fault.rate_limit(-2)
    with pytest.raises(TypeError, match="status"):
        Fault.status_code("500")  # type: ignore[arg-type]
    fake = FakeTinker()
    with pytest.raises(ValueError, match="rate"):
        fake.add_fault_rate(Fault.server_error(), 1.5)
    with pytest.raises(TypeError, match="Fault"):
        fake.script("500")  # type: ignore[arg-type]


# --- the request log ----------------------------------------------------------------


async def test_request_log_masks_the_key(fake_tinker, client, autojump_clock):
    """Requests are recorded with method, path, query, JSON; the key is masked."""
    fake_tinker.add_run("run-1")
    await client.get("/api/v1/training_runs/run-1", params={"access_scope": "owned"})
    await client.post(
        "/api/v1/create_session",
        json={"tags": ["a"]},
        headers={"X-Idempotency-Key": "k1"},
    )
    get, post = fake_tinker.requests
    assert (get.method, get.path, get.query) == (
        "GET",
        "/api/v1/training_runs/run-1",
        {"access_scope": "owned"},
    )
    assert get.json is None
    assert get.headers["x-api-key"] == "***"
    assert (post.method, post.json, post.idempotency_key) == (
        "POST",
        {"tags": ["a"]},
        "k1",
    )
    assert KEY not in repr(fake_tinker.requests)
    assert get.time <= post.time
    assert fake_tinker.request_count() == 2
    assert fake_tinker.request_count(method="get") == 1
    assert fake_tinker.request_count(path="/api/v1/training_runs") == 1
    fake_tinker.clear_requests()
    assert fake_tinker.requests == []


async def test_request_log_limit(autojump_clock):
    """With a limit only the latest requests are kept; all are counted."""
    fake = FakeTinker(request_log_limit=2)
    async with httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    ) as client:
        for path in ("/api/v1/healthz", "/api/v1/nothing", "/api/v1/training_runs"):
            await client.get(path)
    assert [r.path for r in fake.requests] == [
        "/api/v1/nothing",
        "/api/v1/training_runs",
    ]
    assert fake.requests_received == 3


async def test_request_log_records_faults(fake_tinker, client, autojump_clock):
    """The log names the fault injected into each request."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(Fault.latency(1))
    await client.get("/api/v1/training_runs/run-1")
    await client.get("/api/v1/training_runs/run-1")
    assert [r.fault for r in fake_tinker.requests] == ["latency", None]


# --- admin API, lifespan, state API -------------------------------------------------


async def test_admin_api(fake_tinker, autojump_clock):
    """The /_fake/ API adds runs, corrupts them and reports restores, unrecorded."""
    async with httpx.AsyncClient(
        transport=fake_tinker.transport(), base_url="http://f"
    ) as client:
        added = await client.post(
            "/_fake/runs", json={"run_id": "run-9", "checkpoints": ["x", "y"]}
        )
        assert TrainingRun.from_json(added.json()).last_checkpoint is not None
        duplicate = await client.post("/_fake/runs", json={"run_id": "run-9"})
        assert duplicate.status_code == 400
        assert (
            await client.post("/_fake/corrupt", json={"run_id": "run-9"})
        ).json() == {}
        assert fake_tinker.run("run-9").corrupted
        unknown = await client.post("/_fake/corrupt", json={"run_id": "nope"})
        assert unknown.status_code == 404
        restores = await client.get("/_fake/restores")
        assert restores.json() == {"restores": {}}
        stats = (await client.get("/_fake/stats")).json()
        assert (stats["runs"], stats["requests"]) == (1, 0)
        assert (await client.get("/_fake/nothing")).status_code == 404
    assert fake_tinker.requests == []


async def test_lifespan_protocol(fake_tinker):
    """The app completes the ASGI lifespan handshake."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message["type"])

    await fake_tinker.app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_state_api_errors():
    """The state API rejects unknown runs, duplicates and bad arguments."""
    fake = FakeTinker()
    fake.add_run("run-1")
    with pytest.raises(ValueError, match="exists"):
        fake.add_run("run-1")
    with pytest.raises(ValueError, match="run_id"):
        fake.add_run("a/b")
    with pytest.raises(TypeError, match="checkpoints"):
        fake.add_run("run-2", checkpoints="ckpt")
    with pytest.raises(KeyError, match="ghost"):
        fake.add_checkpoint("ghost", "c")
    with pytest.raises(ValueError, match="already has"):
        fake.add_checkpoint("run-1", "ckpt-0001")
    with pytest.raises(ValueError, match="checkpoint_type"):
        fake.add_checkpoint("run-1", "c", checkpoint_type="other")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        fake.expire_checkpoint("tinker://run-1/weights/nope")
    with pytest.raises(ValueError, match="checkpoint path"):
        fake.delete_checkpoint("nope")
    with pytest.raises(KeyError):
        fake.corrupt("ghost")
    with pytest.raises(ValueError, match="long_poll"):
        FakeTinker(long_poll=-1)
    with pytest.raises(ValueError, match="future_try_again"):
        FakeTinker(future_try_again=-1)
    with pytest.raises(ValueError, match="epoch"):
        FakeTinker(epoch=dt.datetime(2025, 1, 1))


def test_deleted_checkpoint_name_can_be_reused():
    """After a delete, a checkpoint of the same name can be added again."""
    fake = FakeTinker()
    fake.add_run("run-1", checkpoints=["c1"])
    fake.delete_checkpoint("tinker://run-1/weights/c1")
    again = fake.add_checkpoint("run-1", "c1")
    assert fake.checkpoints("run-1") == [again]


def test_repr_is_short():
    """The simulator's repr summarises its state."""
    fake = FakeTinker()
    fake.add_run("run-1")
    assert repr(fake) == "<FakeTinker runs=1 sessions=0 requests=0>"
