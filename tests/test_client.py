"""The native client against the simulator, in process (``fake.transport()``)."""

from __future__ import annotations

import datetime as dt
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from trio_tinkex_recovery import (
    APIConnectionError,
    AuthenticationError,
    CheckpointUnavailableError,
    Config,
    InternalServerError,
    NotFoundError,
    RequestFailedError,
    ResponseValidationError,
    RestClient,
    RestClientProtocol,
    ServiceClient,
    ServiceProtocol,
    TrainingClient,
    open_service_client,
    set_testing,
)
from trio_tinkex_recovery.testing import FakeTinker, Fault

from .conftest import FAKE_KEY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = FAKE_KEY
BASE = "https://tinker.test"
RUN = "run-1"
LAST = "tinker://run-1/weights/ckpt-0002"
FIRST = "tinker://run-1/weights/ckpt-0001"


def config(**overrides) -> Config:
    return Config(api_key=KEY, base_url=BASE, **overrides)


@asynccontextmanager
async def service_for(
    fake: FakeTinker, *, heartbeat_interval: float | None = None, **overrides
) -> AsyncIterator[ServiceClient]:
    """A client of ``fake``, in test mode: exact delays, heartbeat as given."""
    with set_testing(True, heartbeat_interval=heartbeat_interval):
        async with open_service_client(
            config(**overrides), transport=fake.transport()
        ) as service:
            yield service


def calls(fake: FakeTinker) -> list[tuple[str, str]]:
    """The (method, path) of every request, retrieve_future polls collapsed."""
    seen: list[tuple[str, str]] = []
    for request in fake.requests:
        step = (request.method, request.path)
        if not (seen and seen[-1] == step == ("POST", "/api/v1/retrieve_future")):
            seen.append(step)
    return seen


def bodies(fake: FakeTinker, path: str) -> list[object]:
    return [r.json for r in fake.requests if r.path == path]


async def test_restore_follows_the_sdk_flow(fake, autojump_clock):
    """A restore: weights_info, config, session, load_weights, then the future."""
    async with open_service_client(config(), transport=fake.transport()) as service:
        client = await service.create_training_client_from_state_with_optimizer(LAST)
    (session_id,) = fake.sessions
    assert calls(fake) == [
        ("POST", "/api/v1/weights_info"),
        ("POST", "/api/v1/client/config"),
        ("POST", "/api/v1/create_session"),
        ("POST", "/api/v1/load_weights"),
        ("POST", "/api/v1/retrieve_future"),
        ("POST", f"/api/v1/sessions/{session_id}/finish"),
    ]
    assert bodies(fake, "/api/v1/weights_info") == [{"tinker_path": LAST}]
    assert bodies(fake, "/api/v1/client/config") == [{"sdk_version": "0.38.0"}]
    assert bodies(fake, "/api/v1/create_session") == [
        {
            "tags": [],
            "user_metadata": {},
            "sdk_version": "0.38.0",
            "type": "create_session",
        }
    ]
    assert bodies(fake, "/api/v1/load_weights") == [
        {
            "session_id": session_id,
            "model_seq_id": 0,
            "path": LAST,
            "optimizer": True,
            "type": "load_weights",
        }
    ]
    assert client.model_id == f"{session_id}:train:0"
    assert client.session_id == session_id
    assert (client.base_model, client.lora_rank) == ("Qwen/Qwen3-8B", 32)
    assert client.checkpoint.tinker_path == LAST
    assert client.optimizer_restored is True
    assert fake.restores == {RUN: 1}
    assert fake.sessions[session_id].finished == "success"
    assert fake.sessions[session_id].model_ids == (client.model_id,)


async def test_every_request_carries_the_key_and_posts_an_idempotency_key(
    fake, autojump_clock
):
    """The simulator (which checks the key) sees it; POSTs carry distinct keys."""
    async with service_for(fake) as service:
        await service.create_training_client_from_state(LAST)
    posts = [r for r in fake.requests if r.method == "POST"]
    assert all(r.headers["x-api-key"] == "***" for r in fake.requests)
    keys = [r.idempotency_key for r in posts]
    assert all(keys)
    assert len(set(keys)) == len(keys)


async def test_model_seq_id_counts_up_within_one_session(fake, autojump_clock):
    """One session per service client; each restore takes the next model_seq_id."""
    async with service_for(fake) as service:
        first = await service.create_training_client_from_state(LAST)
        second = await service.create_training_client_from_state(FIRST)
        third = await service.create_training_client_from_state_with_optimizer(LAST)
    (session_id,) = fake.sessions
    assert [c.model_id for c in (first, second, third)] == [
        f"{session_id}:train:{n}" for n in range(3)
    ]
    assert [first.optimizer_restored, third.optimizer_restored] == [False, True]
    assert [b["optimizer"] for b in bodies(fake, "/api/v1/load_weights")] == [  # type: ignore[index]
        False,
        False,
        True,
    ]
    assert fake.request_count(path="/api/v1/create_session") == 1
    assert fake.request_count(path="/api/v1/client/config") == 1
    assert fake.restores == {RUN: 3}


async def test_restored_model_is_a_training_run_of_its_own(fake, autojump_clock):
    """The new model id answers GET /training_runs, and lists its own saves."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        rest = service.create_rest_client()
        run = await rest.get_training_run(client.model_id)
    assert run.training_run_id == client.model_id
    assert run.corrupted is False


async def test_missing_checkpoint_is_unavailable_before_any_load(fake, autojump_clock):
    """A checkpoint the service does not know: 404 → CheckpointUnavailableError."""
    path = "tinker://run-1/weights/ckpt-9999"
    async with service_for(fake) as service:
        with pytest.raises(CheckpointUnavailableError) as info:
            await service.create_training_client_from_state(path)
    assert info.value.path == path
    assert info.value.status == 404
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, NotFoundError)
    assert fake.request_count(path="/api/v1/load_weights") == 0
    assert fake.restores == {}


async def test_expired_checkpoint_is_unavailable(fake, autojump_clock):
    """An expired checkpoint (410 from weights_info) cannot be restored."""
    fake.expire_checkpoint(LAST)
    async with service_for(fake) as service:
        with pytest.raises(CheckpointUnavailableError) as info:
            await service.create_training_client_from_state_with_optimizer(LAST)
    assert (info.value.path, info.value.status) == (LAST, 410)
    assert fake.restores == {}


async def test_load_failing_as_user_error_is_unavailable(fake, autojump_clock):
    """A load whose future fails with category user: CheckpointUnavailableError."""
    sampler = fake.add_checkpoint(RUN, "s-1", checkpoint_type="sampler").tinker_path
    async with service_for(fake) as service:
        with pytest.raises(CheckpointUnavailableError) as info:
            await service.create_training_client_from_state(sampler)
    assert info.value.path == sampler
    assert isinstance(info.value.__cause__, RequestFailedError)
    assert info.value.__cause__.category == "user"
    assert "sampler checkpoint" in str(info.value)


@pytest.mark.parametrize("code", [404, 410])
async def test_load_weights_gone_status_is_unavailable(fake, autojump_clock, code):
    """load_weights answering 404/410 for the path: CheckpointUnavailableError."""
    fake.script(Fault.status_code(code, path="/api/v1/load_weights"))
    async with service_for(fake) as service:
        with pytest.raises(CheckpointUnavailableError) as info:
            await service.create_training_client_from_state(LAST)
    assert (info.value.path, info.value.status) == (LAST, code)


async def test_lost_load_response_is_retried_without_a_second_restore(
    fake, autojump_clock
):
    """A dropped load_weights answer: the retry replays, one model is made."""
    fake.script(Fault.drop(after_action=True, path="/api/v1/load_weights"))
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
    loads = [r for r in fake.requests if r.path == "/api/v1/load_weights"]
    assert len(loads) == 2
    assert loads[0].idempotency_key == loads[1].idempotency_key
    assert loads[0].json == loads[1].json
    assert fake.idempotent_replays == 1
    assert fake.restores == {RUN: 1}
    assert client.model_id.endswith(":train:0")


async def test_restore_failing_ambiguously_is_repeated_as_the_same_operation(
    fake, autojump_clock
):
    """After retries run out on a lost answer, the next restore repeats it."""
    fake.script(Fault.drop(after_action=True, path="/api/v1/load_weights"))
    async with service_for(fake, max_retries=0) as service:
        with pytest.raises(APIConnectionError):
            await service.create_training_client_from_state(LAST)
        again = await service.create_training_client_from_state(LAST)
        other = await service.create_training_client_from_state(LAST)
    loads = [r for r in fake.requests if r.path == "/api/v1/load_weights"]
    assert (
        loads[0].idempotency_key == loads[1].idempotency_key != loads[2].idempotency_key
    )
    assert [r.json["model_seq_id"] for r in loads] == [0, 0, 1]
    assert again.model_id.endswith(":train:0")
    assert other.model_id.endswith(":train:1")
    assert fake.restores == {RUN: 2}


async def test_restore_with_other_optimizer_choice_is_a_new_operation(
    fake, autojump_clock
):
    """A pending restore is only repeated for the same path and optimizer flag."""
    fake.script(Fault.drop(after_action=True, path="/api/v1/load_weights"))
    async with service_for(fake, max_retries=0) as service:
        with pytest.raises(APIConnectionError):
            await service.create_training_client_from_state(LAST)
        client = await service.create_training_client_from_state_with_optimizer(LAST)
    assert client.model_id.endswith(":train:1")


async def test_cancelled_restore_is_resumed_not_duplicated(autojump_clock):
    """A restore cancelled while its load runs is resumed by the next call."""
    fake = FakeTinker(future_delay=100)
    fake.add_run(RUN)
    async with service_for(fake) as service:
        with trio.move_on_after(5):
            await service.create_training_client_from_state(LAST)
        assert fake.restores == {RUN: 1}
        client = await service.create_training_client_from_state(LAST)
    assert trio.current_time() >= 100
    assert client.model_id.endswith(":train:0")
    assert fake.restores == {RUN: 1}
    assert fake.idempotent_replays == 1


async def test_failed_future_poll_is_resumed_by_the_next_restore(fake, autojump_clock):
    """A 5xx while waiting for the load: the next restore waits for the same one."""
    fake.script(Fault.server_error(path="/api/v1/retrieve_future"))
    async with service_for(fake, max_retries=0) as service:
        with pytest.raises(InternalServerError):
            await service.create_training_client_from_state(LAST)
        client = await service.create_training_client_from_state(LAST)
    assert client.model_id.endswith(":train:0")
    assert fake.restores == {RUN: 1}


async def test_unavailable_checkpoint_is_not_kept_pending(fake, autojump_clock):
    """A clear refusal is final: trying again is a new operation."""
    sampler = fake.add_checkpoint(RUN, "s-1", checkpoint_type="sampler").tinker_path
    async with service_for(fake) as service:
        for _ in range(2):
            with pytest.raises(CheckpointUnavailableError):
                await service.create_training_client_from_state(sampler)
    seqs = [b["model_seq_id"] for b in bodies(fake, "/api/v1/load_weights")]  # type: ignore[index]
    assert seqs == [0, 1]


async def test_transient_faults_are_retried_with_backoff(fake, autojump_clock):
    """429 with Retry-After, 408 and 503 on the way: the restore still succeeds."""
    fake.script(
        Fault.rate_limit(3, path="/api/v1/weights_info"),
        Fault.request_timeout(path="/api/v1/create_session"),
        Fault.server_error(path="/api/v1/load_weights"),
    )
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
    assert client.model_id.endswith(":train:0")
    assert fake.restores == {RUN: 1}
    assert fake.request_count(path="/api/v1/create_session") == 2
    assert trio.current_time() >= 3 + 0.5 + 0.5


async def test_save_state_saves_a_training_checkpoint(fake, autojump_clock):
    """save_state sends the SDK's save_weights request and returns the checkpoint."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        saved = await client.save_state("ckpt-0003")
        later = await client.save_state("ckpt-0004")
        listed = await service.create_rest_client().list_checkpoints(client.model_id)
    assert saved.tinker_path == f"tinker://{client.model_id}/weights/ckpt-0003"
    assert saved.checkpoint_id == "weights/ckpt-0003"
    assert saved.checkpoint_type == "training"
    assert later.tinker_path.endswith("/ckpt-0004")
    assert bodies(fake, "/api/v1/save_weights") == [
        {
            "model_id": client.model_id,
            "path": "ckpt-0003",
            "seq_id": 1,
            "overwrite": False,
            "type": "save_weights",
        },
        {
            "model_id": client.model_id,
            "path": "ckpt-0004",
            "seq_id": 2,
            "overwrite": False,
            "type": "save_weights",
        },
    ]
    assert [c.tinker_path for c in listed][-2:] == [
        saved.tinker_path,
        later.tinker_path,
    ]


async def test_save_state_keeps_metadata_and_a_ttl(fake, autojump_clock):
    """user_metadata and ttl_seconds reach the checkpoint: its metadata, and an
    expiry that many seconds after the save (the simulator's wall clock)."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        before = dt.datetime.now(dt.UTC)
        await client.save_state(
            "ckpt-0003", user_metadata={"step": "3"}, ttl_seconds=60
        )
        after = dt.datetime.now(dt.UTC)
        listed = await service.create_rest_client().list_checkpoints(client.model_id)
        with pytest.raises(ValueError, match="ttl_seconds"):
            await client.save_state("ckpt-0004", ttl_seconds=0)
    (saved,) = [c for c in listed if c.tinker_path.endswith("/ckpt-0003")]
    assert saved.user_metadata == {"step": "3"}
    assert saved.expires_at is not None
    ttl = dt.timedelta(seconds=60)
    assert before + ttl <= saved.expires_at <= after + ttl


async def test_save_state_refusal_raises_request_failed(fake, autojump_clock):
    """Saving over an existing name fails as a user error."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        await client.save_state("dup")
        with pytest.raises(RequestFailedError) as info:
            await client.save_state("dup")
    assert info.value.category == "user"
    assert info.value.retryable is False


async def test_save_state_lost_answer_is_repeated_as_the_same_save(
    fake, autojump_clock
):
    """A save whose answer was lost is repeated with the same key and seq_id."""
    async with service_for(fake, max_retries=0) as service:
        client = await service.create_training_client_from_state(LAST)
        fake.script(Fault.drop(after_action=True, path="/api/v1/save_weights"))
        with pytest.raises(APIConnectionError):
            await client.save_state("ckpt-0003")
        saved = await client.save_state("ckpt-0003")
    saves = [r for r in fake.requests if r.path == "/api/v1/save_weights"]
    assert saves[0].idempotency_key == saves[1].idempotency_key
    assert [r.json["seq_id"] for r in saves] == [1, 1]
    assert saved.tinker_path.endswith("/ckpt-0003")


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", ValueError),
        ("a/b", ValueError),
        ("has space", ValueError),
        ("q?x", ValueError),
        (7, TypeError),
    ],
)
async def test_save_state_rejects_bad_names_before_sending(
    fake, autojump_clock, name, error
):
    """A name that cannot be a path segment is refused locally: a str that
    cannot be one is a ValueError, anything else a TypeError."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        before = len(fake.requests)
        with pytest.raises(error):
            await client.save_state(name)
    assert not [r for r in fake.requests[before:] if "save" in r.path]


async def test_rest_client_reads_runs_checkpoints_and_weights_info(
    fake, autojump_clock
):
    """The REST client decodes the simulator's runs, listings and weights info."""
    async with service_for(fake) as service:
        rest = service.create_rest_client()
        assert service.create_rest_client() is rest
        run = await rest.get_training_run(RUN)
        checkpoints = await rest.list_checkpoints(RUN)
        info = await rest.get_weights_info(LAST)
    assert run == fake.run(RUN)
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == LAST
    assert checkpoints == fake.checkpoints(RUN)
    assert info == fake.weights_info(LAST)
    get = fake.requests[0]
    assert (get.method, get.path, dict(get.query)) == (
        "GET",
        "/api/v1/training_runs/run-1",
        {"access_scope": "owned"},
    )
    assert fake.requests[1].path == "/api/v1/training_runs/run-1/checkpoints"


async def test_rest_client_maps_missing_runs_and_malformed_answers(
    fake, autojump_clock
):
    """An unknown run is NotFoundError; a spoilt body is ResponseValidationError."""
    async with service_for(fake) as service:
        rest = service.create_rest_client()
        with pytest.raises(NotFoundError):
            await rest.get_training_run("no-such-run")
        fake.script(Fault.malformed(path="/api/v1/training_runs"))
        with pytest.raises(ResponseValidationError, match="training_runs/run-1"):
            await rest.get_training_run(RUN)
        fake.script(Fault.missing_fields("base_model", path="/api/v1/training_runs"))
        with pytest.raises(ResponseValidationError, match="base_model"):
            await rest.get_training_run(RUN)
        fake.script(Fault.missing_fields("checkpoints", path="/api/v1/training_runs"))
        with pytest.raises(ResponseValidationError, match="checkpoints"):
            await rest.list_checkpoints(RUN)


@pytest.mark.parametrize("run_id", ["", "a/b", "..", "x?y", "has space", "%2e"])
async def test_rest_client_validates_run_ids_before_sending(
    fake, autojump_clock, run_id
):
    """A run id that could address something else never reaches the wire."""
    async with service_for(fake) as service:
        rest = service.create_rest_client()
        with pytest.raises(ValueError, match="run_id"):
            await rest.get_training_run(run_id)
        with pytest.raises(ValueError, match="run_id"):
            await rest.list_checkpoints(run_id)
    assert fake.requests == []


@pytest.mark.parametrize(
    "path", ["run-1/ckpt", "tinker://run-1/ckpt", "", "s3://x/y/z"]
)
async def test_bad_checkpoint_paths_are_refused_before_sending(
    fake, autojump_clock, path
):
    """Restore and weights_info refuse non-tinker paths locally."""
    async with service_for(fake) as service:
        with pytest.raises(ValueError, match="checkpoint path"):
            await service.create_training_client_from_state(path)
        with pytest.raises(ValueError, match="checkpoint path"):
            await service.create_rest_client().get_weights_info(path)
    assert fake.requests == []


async def test_heartbeat_keeps_the_session_alive(fake, autojump_clock):
    """Once a session exists, a heartbeat goes out every 10 s."""
    async with open_service_client(config(), transport=fake.transport()) as service:
        await trio.sleep(30)
        assert fake.request_count(path="/api/v1/session_heartbeat") == 0
        await service.create_training_client_from_state(LAST)
        await trio.sleep(25)
    (session,) = fake.sessions.values()
    assert session.heartbeats == 2
    (created,) = [r for r in fake.requests if r.path == "/api/v1/create_session"]
    start = created.time
    beats = [r for r in fake.requests if r.path == "/api/v1/session_heartbeat"]
    assert [r.time - start for r in beats] == pytest.approx([10, 20])
    assert beats[0].json == {
        "session_id": session.session_id,
        "type": "session_heartbeat",
    }


async def test_ended_session_is_replaced_on_the_next_restore(fake, autojump_clock):
    """A heartbeat answered 410 ends the session; the next restore opens another."""
    fake.script(Fault.status_code(410, path="/api/v1/session_heartbeat"))
    async with service_for(fake, heartbeat_interval=10) as service:
        first = await service.create_training_client_from_state(LAST)
        await trio.sleep(15)
        second = await service.create_training_client_from_state(LAST)
    assert len(fake.sessions) == 2
    assert first.session_id != second.session_id
    assert second.model_id == f"{second.session_id}:train:0"
    assert fake.request_count(path="/api/v1/client/config") == 1


async def test_leaving_with_an_error_finishes_the_session_as_errored(
    fake, autojump_clock
):
    """An exception in the block finishes the session "errored" and propagates."""
    with pytest.RaisesGroup(KeyError):
        async with service_for(fake) as service:
            await service.create_training_client_from_state(LAST)
            raise KeyError("boom")
    (session,) = fake.sessions.values()
    assert session.finished == "errored"


async def test_cancelled_block_finishes_the_session_as_interrupted(
    fake, autojump_clock
):
    """Cancellation still finishes the session (shielded), as interrupted."""
    with trio.move_on_after(50):
        async with service_for(fake, heartbeat_interval=10) as service:
            await service.create_training_client_from_state(LAST)
            await trio.sleep_forever()
    (session,) = fake.sessions.values()
    assert session.finished == "interrupted"
    assert session.heartbeats == 4


async def test_closed_service_client_refuses_work(fake, autojump_clock):
    """After aclose, restores and REST calls raise ClosedResourceError."""
    async with service_for(fake) as service:
        rest = service.create_rest_client()
        await service.aclose()
        await service.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await service.create_training_client_from_state(LAST)
        with pytest.raises(trio.ClosedResourceError):
            service.create_rest_client()
        with pytest.raises(trio.ClosedResourceError):
            await rest.get_training_run(RUN)
    assert fake.requests == []


async def test_no_session_no_finish(fake, autojump_clock):
    """A service client that never restored sends no session requests."""
    async with service_for(fake) as service:
        await service.create_rest_client().get_training_run(RUN)
    assert calls(fake) == [("GET", "/api/v1/training_runs/run-1")]


async def test_config_defaults_to_the_environment(fake, autojump_clock, monkeypatch):
    """Without a config, TINKER_API_KEY and TINKER_BASE_URL are used."""
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9")
    async with open_service_client(transport=fake.transport()) as service:
        run = await service.create_rest_client().get_training_run(RUN)
    assert run.training_run_id == RUN


async def test_wrong_key_is_an_authentication_error_without_the_key(autojump_clock):
    """A refused key raises AuthenticationError, whose text hides the key."""
    fake = FakeTinker(api_key="tml-the-right-one")
    fake.add_run(RUN)
    async with service_for(fake) as service:
        with pytest.raises(AuthenticationError) as info:
            await service.create_rest_client().get_training_run(RUN)
    assert info.value.status == 401
    assert info.value.retryable is False
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value)


async def test_concurrent_restores_share_one_session(fake, autojump_clock):
    """Restores started together create one session and distinct models."""
    clients = []

    async def restore(path: str) -> None:
        clients.append(await service.create_training_client_from_state(path))

    async with service_for(fake) as service:
        async with trio.open_nursery() as nursery:
            for path in (LAST, FIRST, LAST):
                nursery.start_soon(restore, path)
    assert len(fake.sessions) == 1
    assert sorted(c.model_id.rsplit(":", 1)[1] for c in clients) == ["0", "1", "2"]
    assert fake.restores == {RUN: 3}


async def test_async_methods_checkpoint(fake, autojump_clock):
    """Every public async method is a checkpoint (Trio's convention)."""
    async with service_for(fake) as service:
        rest = service.create_rest_client()
        with trio.testing.assert_checkpoints():
            await rest.get_training_run(RUN)
        with trio.testing.assert_checkpoints():
            await rest.list_checkpoints(RUN)
        with trio.testing.assert_checkpoints():
            await rest.get_weights_info(LAST)
        with trio.testing.assert_checkpoints():
            client = await service.create_training_client_from_state(LAST)
        with trio.testing.assert_checkpoints():
            await client.save_state("c-1")
        await service.aclose()
        with trio.testing.assert_checkpoints():
            await service.aclose()


async def test_clients_have_no_public_constructor_and_safe_reprs(fake, autojump_clock):
    """Factories hand out the clients; their reprs never show the key."""
    for cls in (ServiceClient, RestClient, TrainingClient):
        with pytest.raises(TypeError, match="no public constructor"):
            cls()
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
        rest = service.create_rest_client()
        texts = [repr(service), repr(rest), repr(client), str(client)]
    assert all(KEY not in text for text in texts)
    assert client.model_id in repr(client)
    assert isinstance(service, ServiceProtocol)
    assert isinstance(rest, RestClientProtocol)


async def test_training_client_fields_are_read_only(fake, autojump_clock):
    """The training client's identity cannot be changed after the restore."""
    async with service_for(fake) as service:
        client = await service.create_training_client_from_state(LAST)
    with pytest.raises(AttributeError):
        client.model_id = "other"  # type: ignore[misc]
