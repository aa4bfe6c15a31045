"""Fakes implementing the seams, shared by the core tests."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import shutil
import tempfile
import warnings
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, settings

from trio_tinkex_recovery import Checkpoint, CheckpointUnavailableError, TrainingRun
from trio_tinkex_recovery._types import TrainingRunPage
from trio_tinkex_recovery.testing import FakeTinker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytest_plugins = ["trio_tinkex_recovery.testing.pytest_plugin"]

# Property tests: 100 examples by default; HYPOTHESIS_PROFILE=nightly (nox -s
# nightly) runs 2,000.  No deadline: the suite shares two cores.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("nightly", settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL 16 (``pgserver``) for the whole test session.

    It fails (never skips) when no server can be started: the PostgreSQL
    tests are part of the default run.  Its folder is its own, not under
    pytest's base folder, which another pytest session may prune.
    """
    folder = tempfile.mkdtemp(prefix="ttr-postgres-")
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root in CI).
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(folder, cleanup_mode="stop")
    except ImportError as exc:  # pragma: no cover - the test extra has it
        pytest.fail(f"pgserver is missing ({exc}); pip install -e '.[test]'")
    except Exception as exc:  # pragma: no cover - reported, not skipped
        pytest.fail(f"cannot start PostgreSQL with pgserver in {folder}: {exc}")
    yield server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture
def postgres_dsn(postgres_server: Any) -> Iterator[str]:
    """The DSN of a fresh, empty database on the session's PostgreSQL."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_databases)}"
    admin = postgres_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.get_uri(name)
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The API key the ``fake`` simulator expects.
FAKE_KEY = "tml-FakeTinkerTestKey-never-shown"


@pytest.fixture
def fake() -> FakeTinker:
    """A Tinker simulator expecting `FAKE_KEY`, holding ``run-1``.

    ``run-1`` is a LoRA (rank 32) of ``Qwen/Qwen3-8B`` with the training
    checkpoints ``ckpt-0001`` and ``ckpt-0002`` (the last one).
    """
    fake = FakeTinker(api_key=FAKE_KEY)
    fake.add_run(
        "run-1",
        base_model="Qwen/Qwen3-8B",
        lora_rank=32,
        checkpoints=["ckpt-0001", "ckpt-0002"],
    )
    return fake


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Each test (and the CLI processes it starts) keeps its state apart."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


def checkpoint(
    run_id: str,
    name: str,
    *,
    minutes: int = 0,
    metadata: dict[str, Any] | None = None,
    expires_at: dt.datetime | None = None,
    kind: str = "training",
) -> Checkpoint:
    """A checkpoint of ``run_id`` saved ``minutes`` after T0."""
    folder = "weights" if kind == "training" else "sampler_weights"
    return Checkpoint(
        checkpoint_id=f"{folder}/{name}",
        checkpoint_type=kind,
        time=T0 + dt.timedelta(minutes=minutes),
        tinker_path=f"tinker://{run_id}/{folder}/{name}",
        user_metadata=metadata,
        expires_at=expires_at,
    )


def training_run(
    run_id: str, *, corrupted: bool = False, last: Checkpoint | None = None
) -> TrainingRun:
    return TrainingRun(
        training_run_id=run_id,
        base_model="Qwen/Qwen3-8B",
        model_owner="tester",
        is_lora=True,
        last_request_time=T0,
        corrupted=corrupted,
        lora_rank=32,
        last_checkpoint=last,
    )


@attrs.define
class FakeTrainingClient:
    model_id: str
    path: str
    optimizer: bool


class FakeRest:
    """An in-memory REST client: runs, checkpoints, scripted failures."""

    def __init__(self) -> None:
        self.runs: dict[str, TrainingRun] = {}
        self.checkpoints: dict[str, list[Checkpoint]] = {}
        self.polls: list[tuple[float, str]] = []
        self.fail_polls: dict[str, list[BaseException]] = {}
        self.poll_delay = 0.0
        self.listed: list[str] = []

    def add(self, run_id: str, *names: str, corrupted: bool = False) -> TrainingRun:
        ckpts = [checkpoint(run_id, n, minutes=i) for i, n in enumerate(names)]
        self.checkpoints[run_id] = ckpts
        run = training_run(
            run_id, corrupted=corrupted, last=ckpts[-1] if ckpts else None
        )
        self.runs[run_id] = run
        return run

    def corrupt(self, run_id: str) -> None:
        self.runs[run_id] = attrs.evolve(self.runs[run_id], corrupted=True)

    async def get_training_run(self, run_id: str) -> TrainingRun:
        self.polls.append((trio.current_time(), run_id))
        if self.poll_delay:
            await trio.sleep(self.poll_delay)
        else:
            await trio.lowlevel.checkpoint()
        failures = self.fail_polls.get(run_id)
        if failures:
            raise failures.pop(0)
        return self.runs[run_id]

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        await trio.lowlevel.checkpoint()
        self.listed.append(run_id)
        return list(self.checkpoints.get(run_id, []))

    def poll_times(self, run_id: str) -> list[float]:
        return [t for t, r in self.polls if r == run_id]


class ListingFakeRest(FakeRest):
    """A FakeRest that also lists its runs, a page at a time.

    Runs are listed in the order they were added (``shuffled``: a new order
    on every page), at most ``page_max`` a page.  ``pages`` records every
    list request as ``(time, offset, limit)``; ``fail_lists`` are raised by
    the next list requests, one each; ``list_delay`` is each page's latency.
    """

    def __init__(self, *, shuffled: bool = False, page_max: int = 100) -> None:
        super().__init__()
        self.shuffled = shuffled
        self.page_max = page_max
        self.pages: list[tuple[float, int, int]] = []
        self.fail_lists: list[BaseException] = []
        self.list_delay = 0.0
        self.scopes: list[tuple[str, str | None]] = []
        #: JSON fields to put in a run's listed entry, by run id.
        self.patches: dict[str, dict[str, Any]] = {}
        self._rng = random.Random(0)

    def touch(self, run_id: str, when: dt.datetime) -> None:
        """Set the run's ``last_request_time``."""
        self.runs[run_id] = attrs.evolve(self.runs[run_id], last_request_time=when)

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: str = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        self.pages.append((trio.current_time(), offset, limit))
        self.scopes.append((access_scope, project_id))
        if self.list_delay:
            await trio.sleep(self.list_delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.fail_lists:
            raise self.fail_lists.pop(0)
        runs = list(self.runs.values())
        if self.shuffled:
            self._rng.shuffle(runs)
        limit = min(limit, self.page_max)
        return TrainingRunPage(
            items=tuple(
                {**run.to_json(), **self.patches.get(run.training_run_id, {})}
                for run in runs[offset : offset + limit]
            ),
            offset=offset,
            limit=limit,
            total_count=len(runs),
        )


class FakeService:
    """Creates fake training clients; can fail by script or by path."""

    def __init__(self, rest: FakeRest | None = None) -> None:
        self.rest = rest or FakeRest()
        self.calls: list[tuple[float, str, bool]] = []
        self.failures: list[BaseException] = []
        self.unavailable: set[str] = set()
        self.delay = 0.0
        self.hook: Callable[[str], None] | None = None
        self.created = 0

    def create_rest_client(self) -> FakeRest:
        return self.rest

    async def _create(self, path: str, optimizer: bool) -> FakeTrainingClient:
        self.calls.append((trio.current_time(), path, optimizer))
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.hook is not None:
            self.hook(path)
        if path in self.unavailable:
            raise CheckpointUnavailableError(f"{path} is gone", path=path, status=404)
        if self.failures:
            raise self.failures.pop(0)
        self.created += 1
        new_id = f"session-1:train:{self.created}"
        self.rest.add(new_id, "ckpt-0001")
        return FakeTrainingClient(model_id=new_id, path=path, optimizer=optimizer)

    async def create_training_client_from_state(self, path: str) -> FakeTrainingClient:
        return await self._create(path, False)

    async def create_training_client_from_state_with_optimizer(
        self, path: str
    ) -> FakeTrainingClient:
        return await self._create(path, True)


def drain(events: trio.MemoryReceiveChannel[Any], *, polls: bool = False) -> list[Any]:
    """Every event already buffered on a subscription, without waiting.

    Poll outcomes (``polled``) are left out unless ``polls`` is true.
    """
    got = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            return got
        if polls or event.name != "polled":
            got.append(event)


@pytest.fixture
def rest() -> FakeRest:
    return FakeRest()


@pytest.fixture
def service(rest: FakeRest) -> FakeService:
    return FakeService(rest)
