"""The official SDK adapter, against the simulator on loopback.

Runs in ``nox -s compat`` (which installs ``tinker`` and sets
``TTR_REQUIRE_TINKER=1`` so a missing SDK fails instead of skipping).
"""

from __future__ import annotations

import os

import pytest
import trio

from trio_tinkex_recovery import (
    CheckpointUnavailableError,
    NotFoundError,
    Policy,
    open_monitor,
)
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

if os.environ.get("TTR_REQUIRE_TINKER") == "1":
    import tinker
else:
    tinker = pytest.importorskip("tinker", reason="the tinker extra is not installed")

from trio_tinkex_recovery.sdk import SDKService

KEY = "tml-adapter-SECRET-000000"

pytestmark = [
    # The SDK's REST holder keeps its asyncio sockets open past close(); the
    # leak is the SDK's own, reported when its objects are collected.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture
async def served(nursery, monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("HOME", str(tmp_path))
    fake = FakeTinker()
    fake.add_run("run-1", checkpoints=["ckpt-0001", "ckpt-0002"])
    url = await nursery.start(serve_fake_tinker, fake)
    # The SDK may block on its own I/O: never call it on the Trio thread.
    service_client = await trio.to_thread.run_sync(
        lambda: tinker.ServiceClient(base_url=url, api_key=KEY)
    )
    yield fake, SDKService(service_client)
    with trio.fail_after(30):
        await trio.to_thread.run_sync(
            lambda: service_client.close("success").result(), abandon_on_cancel=True
        )


async def test_recovery_through_the_adapter_returns_an_sdk_training_client(served):
    """A corrupted run is restored once; on_recovery gets a tinker.TrainingClient."""
    fake, service = served
    recovered = []
    policy = Policy(
        enabled=True,
        poll_interval=0.2,
        on_recovery=lambda old, new, checkpoint: recovered.append((new, checkpoint)),
        follow_recovered=False,
    )
    fake.corrupt("run-1")
    with trio.fail_after(30):
        async with open_monitor(policy=policy, service=service) as monitor:
            async with monitor.subscribe() as events:
                await monitor.monitor_run("run-1")
                async for event in events:
                    assert event.name not in ("poll_error", "failed"), event
                    if event.name == "completed":
                        break
            await monitor.executor.wait_idle()
    [(client, checkpoint)] = recovered
    assert isinstance(client, tinker.TrainingClient)
    session_id = next(iter(fake.sessions))
    assert client.model_id == f"{session_id}:train:0"
    assert checkpoint.tinker_path == "tinker://run-1/weights/ckpt-0002"
    assert fake.restore_count("run-1") == 1


async def test_adapter_translates_sdk_errors(served):
    """SDK errors become ours: unknown run → NotFoundError, gone path → unavailable."""
    fake, service = served
    rest = service.create_rest_client()
    run = await rest.get_training_run("run-1")
    assert run.last_checkpoint.tinker_path == "tinker://run-1/weights/ckpt-0002"
    assert len(await rest.list_checkpoints("run-1")) == 2
    with pytest.raises(NotFoundError):
        await rest.get_training_run("no-such-run")
    with pytest.raises(ValueError, match="run_id"):
        await rest.get_training_run("../etc")
    fake.delete_checkpoint("tinker://run-1/weights/ckpt-0002")
    with pytest.raises(CheckpointUnavailableError) as info:
        await service.create_training_client_from_state(
            "tinker://run-1/weights/ckpt-0002"
        )
    assert info.value.path == "tinker://run-1/weights/ckpt-0002"


async def test_adapter_lists_runs_and_the_monitor_polls_by_pages(served):
    """The SDK's list_training_runs pages the simulator; monitor_all uses it."""
    fake, service = served
    fake.add_run("run-2")
    fake.add_run("run-3")
    rest = service.create_rest_client()
    page = await rest.list_training_runs(limit=2, offset=1)
    assert (page.offset, page.limit, page.total_count) == (1, 2, 3)
    assert len(page.items) == 2
    assert all(run.base_model for run in page.training_runs())
    policy = Policy(enabled=True, poll_interval=0.2, jitter=0)
    with trio.fail_after(30):
        async with open_monitor(policy=policy, service=service) as monitor:
            async with monitor.subscribe() as events:
                await monitor.monitor_all(active_within=float("inf"))
                found = trio.current_time()
                assert monitor.monitored_runs == {"run-1", "run-2", "run-3"}
                polled = set()
                async for event in events:
                    assert event.name != "poll_error", event
                    if event.name == "polled" and event.time > found:
                        assert event.metadata["via"] == "list"
                        polled.add(event.run_id)
                        if len(polled) == 3:
                            break
