"""The official ``tinker`` SDK, unchanged, against the served simulator.

Skipped unless ``tinker`` is installed; ``nox -s compat`` installs it and
sets ``TTR_REQUIRE_TINKER=1`` so that a missing SDK fails instead.  The
SDK is synchronous at its surface and runs its own asyncio loop in a thread,
so each call goes through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import gc
import os

import pytest
import trio

from trio_tinkex_recovery.testing import Fault

if os.environ.get("TTR_REQUIRE_TINKER") == "1":  # nox -s compat: never skip
    import tinker
else:
    tinker = pytest.importorskip("tinker", reason="the tinker extra is not installed")

# The SDK leaves sockets of its own open (the one-off client-config pool and
# the process-wide REST holders are never closed); their ResourceWarnings at
# garbage collection are the SDK's, not the simulator's.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

KEY = "tml-compat-test-0123456789"
RUN = "run-1"
PATHS = [f"tinker://{RUN}/weights/ckpt-000{i}" for i in (1, 2, 3)]


async def call(fn, *args):
    """Run a blocking SDK call in a worker thread.

    Never call the SDK from the Trio thread: its constructors and methods
    may block on requests to the simulator, which that thread serves.
    """
    return await trio.to_thread.run_sync(fn, *args)


@pytest.fixture(autouse=True)
def sdk_environment(monkeypatch, tmp_path):
    """No telemetry and no stored credentials for the SDK; its litter collected."""
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    yield
    gc.collect()  # while this module's warning filters still apply


@pytest.fixture
def corrupted_run(fake_tinker):
    """A corrupted run with three training checkpoints."""
    fake_tinker.add_run(RUN, checkpoints=["ckpt-0001", "ckpt-0002", "ckpt-0003"])
    fake_tinker.corrupt(RUN)
    return RUN


@pytest.fixture
async def service(fake_tinker_url):
    """An SDK ServiceClient on the simulator, closed after the test."""
    client = tinker.ServiceClient(base_url=fake_tinker_url, api_key=KEY)
    yield client
    await call(lambda: client.close("success").result())


async def test_rest_client_reads_a_corrupted_run(fake_tinker_url, corrupted_run):
    """RestClient sees the corruption, the last checkpoint and the listing."""
    # The constructor fetches the client config: blocking I/O, so in a thread.
    rest = await call(lambda: tinker.RestClient(base_url=fake_tinker_url, api_key=KEY))
    run = await call(lambda: rest.get_training_run(corrupted_run).result())
    assert run.corrupted is True
    assert run.last_checkpoint.tinker_path == PATHS[-1]
    listing = await call(lambda: rest.list_checkpoints(corrupted_run).result())
    assert [c.tinker_path for c in listing.checkpoints] == PATHS
    with pytest.raises(tinker.NotFoundError):
        await call(lambda: rest.get_training_run("ghost").result())


async def test_rest_client_lists_runs(fake_tinker, fake_tinker_url):
    """list_training_runs pages with limit/offset/access_scope/project_id."""
    for i in range(5):
        fake_tinker.add_run(f"run-{i}", project_id="p1" if i % 2 else None)
    rest = await call(lambda: tinker.RestClient(base_url=fake_tinker_url, api_key=KEY))
    first = await call(lambda: rest.list_training_runs(limit=2).result())
    assert [r.training_run_id for r in first.training_runs] == ["run-4", "run-3"]
    assert (first.cursor.offset, first.cursor.limit) == (0, 2)
    assert first.cursor.total_count == 5
    rest_of = await call(
        lambda: rest.list_training_runs(
            limit=10, offset=2, access_scope="accessible"
        ).result()
    )
    assert [r.training_run_id for r in rest_of.training_runs] == [
        "run-2",
        "run-1",
        "run-0",
    ]
    project = await call(lambda: rest.list_training_runs(project_id="p1").result())
    assert [r.training_run_id for r in project.training_runs] == ["run-3", "run-1"]
    assert fake_tinker.list_requests == 3


async def test_restore_and_save(fake_tinker, service, fake_tinker_url, corrupted_run):
    """from_state and _with_optimizer restore; save_state becomes last_checkpoint."""
    plain = await call(
        lambda: service.create_training_client_from_state(PATHS[1]).result()
    )
    full = await call(
        lambda: service.create_training_client_from_state_with_optimizer(
            PATHS[2]
        ).result()
    )
    (session_id,) = fake_tinker.sessions
    assert plain.model_id == f"{session_id}:train:0"
    assert full.model_id == f"{session_id}:train:1"
    assert [
        (r.model_id, r.tinker_path, r.optimizer) for r in fake_tinker.restore_log
    ] == [
        (plain.model_id, PATHS[1], False),
        (full.model_id, PATHS[2], True),
    ]
    assert fake_tinker.restores == {RUN: 2}
    saved = await call(lambda: full.save_state("after-restore").result())
    assert saved.path == f"tinker://{full.model_id}/weights/after-restore"
    run = fake_tinker.run(full.model_id)
    assert run.last_checkpoint.tinker_path == saved.path
    assert not run.corrupted


async def test_training_steps_and_save(fake_tinker, service, corrupted_run):
    """forward_backward (protobuf), optim_step and save_state are recorded in order."""
    datum = tinker.types.Datum(
        model_input=tinker.types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": tinker.types.TensorData(
                data=[2, 3, 4], dtype="int64", shape=[3]
            )
        },
    )
    client = await call(
        lambda: service.create_training_client_from_state_with_optimizer(
            PATHS[1]
        ).result()
    )
    losses = []
    for _ in range(2):
        step = await call(lambda: client.forward_backward([datum] * 2, "cross_entropy"))
        optim = await call(
            lambda: client.optim_step(tinker.types.AdamParams(learning_rate=1e-4))
        )
        losses.append((await call(step.result)).metrics["loss:sum"])
        await call(optim.result)
    saved = await call(
        lambda: client.save_state("step-2", user_metadata={"step": "2"}).result()
    )
    steps = fake_tinker.training_steps(client.model_id)
    assert [(s.kind, s.seq_id) for s in steps] == [
        ("forward_backward", 1),
        ("optim_step", 2),
        ("forward_backward", 3),
        ("optim_step", 4),
        ("save_weights", 5),
    ]
    assert [s.examples for s in steps if s.kind == "forward_backward"] == [2, 2]
    assert losses == [2.0, 1.0]
    assert fake_tinker.restore_of(client.model_id).optimizer is True
    checkpoint = fake_tinker.run(client.model_id).last_checkpoint
    assert (checkpoint.tinker_path, checkpoint.user_metadata) == (
        saved.path,
        {"step": "2"},
    )


async def test_lost_load_response_restores_once(fake_tinker, service, corrupted_run):
    """The SDK's retry after a dropped load_weights response is replayed, not redone."""
    fake_tinker.script(Fault.drop(after_action=True, path="/api/v1/load_weights"))
    client = await call(
        lambda: service.create_training_client_from_state(PATHS[0]).result()
    )
    assert fake_tinker.restores == {RUN: 1}
    assert fake_tinker.idempotent_replays == 1
    assert fake_tinker.run(client.model_id).last_checkpoint.tinker_path == PATHS[0]


async def test_expired_checkpoint_is_a_user_error(fake_tinker, service, corrupted_run):
    """Restoring an expired checkpoint raises RequestFailedError(category=user)."""
    fake_tinker.expire_checkpoint(PATHS[0])
    with pytest.raises(tinker.RequestFailedError) as caught:
        await call(lambda: service.create_training_client_from_state(PATHS[0]).result())
    assert caught.value.category == tinker.types.RequestErrorCategory.User
    assert fake_tinker.restores == {}
