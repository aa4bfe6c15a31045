"""The native client over loopback HTTP against the simulator served by hypercorn.

Real sockets, so no ``autojump_clock`` here: delays are kept tiny and every
test runs under ``trio.fail_after``.
"""

from __future__ import annotations

import pytest
import trio

from trio_tinkex_recovery import (
    APITimeoutError,
    CheckpointUnavailableError,
    Config,
    Policy,
    open_monitor,
    open_service_client,
    set_testing,
)
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

from .conftest import FAKE_KEY

KEY = FAKE_KEY
LAST = "tinker://run-1/weights/ckpt-0002"


@pytest.fixture(autouse=True)
def quick_waits():
    """Real time here: wait at most 10 ms between retries and future polls."""
    with set_testing(True, max_delay=0.01, heartbeat_interval=10.0):
        yield


async def serve(nursery: trio.Nursery, fake: FakeTinker, **overrides) -> Config:
    base_url = await nursery.start(serve_fake_tinker, fake)
    return Config(api_key=KEY, base_url=base_url, **overrides)


async def test_restore_and_save_over_loopback(nursery, fake):
    """The whole flow over real HTTP: restore, save, read back, finish."""
    config = await serve(nursery, fake)
    with trio.fail_after(20):
        async with open_service_client(config) as service:
            client = await service.create_training_client_from_state_with_optimizer(
                LAST
            )
            saved = await client.save_state("ckpt-0003")
            rest = service.create_rest_client()
            run = await rest.get_training_run(client.model_id)
            listed = await rest.list_checkpoints(client.model_id)
    assert run.training_run_id == client.model_id
    assert run.last_checkpoint is not None
    assert [c.tinker_path for c in listed] == [saved.tinker_path]
    assert fake.restores == {"run-1": 1}
    (session,) = fake.sessions.values()
    assert session.finished == "success"
    assert session.model_ids == (client.model_id,)
    assert all(r.headers.get("x-api-key") == "***" for r in fake.requests)


async def test_dropped_connections_do_not_duplicate_the_restore(nursery, fake):
    """Connections dropped after the server acted: retried, still one model."""
    config = await serve(nursery, fake)
    fake.script(
        Fault.drop(after_action=True, path="/api/v1/create_session"),
        Fault.drop(after_action=True, path="/api/v1/load_weights"),
        Fault.drop(after_action=True, path="/api/v1/retrieve_future"),
    )
    with trio.fail_after(20):
        async with open_service_client(config) as service:
            client = await service.create_training_client_from_state(LAST)
    assert len(fake.sessions) == 1
    assert fake.restores == {"run-1": 1}
    assert fake.idempotent_replays == 3  # one per dropped answer
    loads = [r for r in fake.requests if r.path == "/api/v1/load_weights"]
    assert len(loads) == 2
    assert loads[0].idempotency_key == loads[1].idempotency_key
    assert client.model_id == f"{client.session_id}:train:0"


async def test_rate_limit_and_server_errors_are_ridden_out(nursery, fake):
    """429 with Retry-After and 5xx answers are retried over real HTTP."""
    config = await serve(nursery, fake)
    fake.script(
        Fault.rate_limit(0.05, path="/api/v1/weights_info"),
        Fault.server_error(502, path="/api/v1/load_weights"),
        Fault.request_timeout(path="/api/v1/training_runs"),
    )
    with trio.fail_after(20):
        async with open_service_client(config) as service:
            await service.create_training_client_from_state(LAST)
            run = await service.create_rest_client().get_training_run("run-1")
    assert run.training_run_id == "run-1"
    assert fake.restores == {"run-1": 1}
    # Each scripted fault fired, and the same request was sent again.
    for path in (
        "/api/v1/weights_info",
        "/api/v1/load_weights",
        "/api/v1/training_runs/run-1",
    ):
        sent = [r for r in fake.requests if r.path == path]
        assert len(sent) >= 2, path
        assert sent[0].fault is not None, path
        assert sent[-1].fault is None, path
        if sent[0].method == "POST":
            assert sent[0].idempotency_key == sent[1].idempotency_key


async def test_slow_answers_time_out_per_request(nursery, fake):
    """Config.timeout bounds each HTTP attempt; the timeout maps to our error."""
    config = await serve(nursery, fake, timeout=0.2, max_retries=1)
    fake.script(
        Fault.latency(5, path="/api/v1/training_runs"),
        Fault.latency(5, path="/api/v1/training_runs"),
    )
    with trio.fail_after(20):
        async with open_service_client(config) as service:
            rest = service.create_rest_client()
            with pytest.raises(APITimeoutError) as info:
                await rest.get_training_run("run-1")
            run = await rest.get_training_run("run-1")
    assert info.value.retryable is True
    assert run.training_run_id == "run-1"


async def test_monitor_recovers_with_fallback_over_the_native_client(nursery, fake):
    """A corrupted run whose newest checkpoint expired restores the older one."""
    config = await serve(nursery, fake)
    fake.expire_checkpoint(LAST)
    policy = Policy(enabled=True, poll_interval=0.1, jitter=0, backoff=0.05)
    with trio.fail_after(20):
        async with open_service_client(config) as service:
            async with open_monitor(policy=policy, service=service) as monitor:
                async with monitor.subscribe() as events:
                    await monitor.monitor_run("run-1")
                    fake.corrupt("run-1")
                    async for event in events:
                        if event.name in ("completed", "exhausted"):
                            break
    assert event.name == "completed"
    client = event.metadata["client"]
    assert client.checkpoint.tinker_path == "tinker://run-1/weights/ckpt-0001"
    assert fake.restores == {"run-1": 1}
    assert [r.tinker_path for r in fake.restore_log] == [
        "tinker://run-1/weights/ckpt-0001"
    ]


async def test_missing_checkpoint_over_loopback_is_unavailable(nursery, fake):
    """A deleted checkpoint is CheckpointUnavailableError over real HTTP too."""
    config = await serve(nursery, fake)
    fake.delete_checkpoint(LAST)
    with trio.fail_after(20):
        async with open_service_client(config) as service:
            with pytest.raises(CheckpointUnavailableError) as info:
                await service.create_training_client_from_state(LAST)
    assert info.value.path == LAST
    assert fake.restores == {}


async def test_open_monitor_connects_from_the_environment(nursery, fake, monkeypatch):
    """With TINKER_API_KEY and TINKER_BASE_URL set, open_monitor() needs no service."""
    config = await serve(nursery, fake)
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", config.base_url)
    policy = Policy(enabled=True, poll_interval=0.1, jitter=0, backoff=0.05)
    with trio.fail_after(20):
        async with open_monitor(policy=policy) as monitor:
            async with monitor.subscribe() as events:
                await monitor.monitor_run("run-1")
                fake.corrupt("run-1")
                async for event in events:
                    if event.name in ("completed", "exhausted"):
                        break
    assert event.name == "completed"
    assert fake.restores == {"run-1": 1}


async def test_without_a_key_the_missing_service_error_names_the_variable(
    monkeypatch,
):
    """No service, no rest, no TINKER_API_KEY: the error says what to set."""
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    async with open_monitor(policy=Policy(enabled=True)) as monitor:
        with pytest.raises(ValueError, match="TINKER_API_KEY"):
            await monitor.monitor_run("run-1")
