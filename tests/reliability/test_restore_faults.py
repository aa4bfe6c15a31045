"""Restore faults: each ends as documented, with events in causal order.

- the newest checkpoint deleted or expired → fall back to the next older one;
- ``load_weights`` failing with a ``user`` category → fall back, or without
  ``fallback`` (or with no older checkpoint) → ``exhausted`` + ``on_failure``;
- ``load_weights`` failing with a ``server`` category → retry after backoff,
  up to ``max_attempts``, then ``exhausted`` + ``on_failure``;
- ``load_weights`` hanging past its timeout → retry after backoff, as the
  same operation: never a second restore.

The simulator runs in process (``MockClock``: exact times) unless the point is
a real HTTP timeout, which needs loopback.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from trio_tinkex_recovery import (
    APITimeoutError,
    Best,
    CheckpointUnavailableError,
    NoCheckpointError,
    Policy,
    RequestFailedError,
    open_monitor,
)
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

from ._support import FAST, KEY, Intercept, Recorder, service_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_tinkex_recovery import TelemetryEvent

RUN = "run-1"


def path(name: str) -> str:
    return f"tinker://{RUN}/weights/{name}"


NEWEST, MIDDLE, OLDEST = path("ckpt-0003"), path("ckpt-0002"), path("ckpt-0001")


@attrs.define
class Calls:
    """What the policy's callbacks were called with."""

    recovered: list[tuple[Any, Any, Any]] = attrs.field(factory=list)
    failed: list[tuple[str, BaseException]] = attrs.field(factory=list)

    def on_recovery(self, old: Any, new: Any, checkpoint: Any) -> None:
        self.recovered.append((old, new, checkpoint))

    def on_failure(self, run_id: str, error: BaseException) -> None:
        self.failed.append((run_id, error))


@attrs.define
class Scenario:
    fake: FakeTinker
    calls: Calls
    recorder: Recorder

    def steps(self) -> list[tuple[str, Any]]:
        """The run's events as (name, checkpoint or error type), in order."""
        steps: list[tuple[str, Any]] = []
        for event in self.recorder.events:
            assert event.run_id == RUN
            if event.name == "checkpoint_selected":
                steps.append((event.name, event.metadata["checkpoint"]))
            elif event.name in ("failed", "exhausted"):
                steps.append((event.name, type(event.metadata["error"])))
            else:
                steps.append((event.name, event.measurements.get("attempt")))
        return steps

    def times(self, name: str) -> list[float]:
        return [e.time for e in self.recorder.events if e.name == name]

    def loads(self) -> list[Any]:
        return [r for r in self.fake.requests if r.path == "/api/v1/load_weights"]


def fake_with_run(*checkpoints: str) -> FakeTinker:
    fake = FakeTinker(api_key=KEY)
    fake.add_run(
        RUN, checkpoints=checkpoints or ("ckpt-0001", "ckpt-0002", "ckpt-0003")
    )
    fake.corrupt(RUN)
    return fake


@asynccontextmanager
async def recovering(
    fake: FakeTinker,
    *,
    handler: Any = None,
    client: dict[str, Any] | None = None,
    **policy: Any,
) -> AsyncIterator[Scenario]:
    """Watch the corrupted run; yield once its recovery has ended."""
    calls = Calls()
    settings = {
        "enabled": True,
        "jitter": 0,
        "backoff": 5.0,
        "on_recovery": calls.on_recovery,
        "on_failure": calls.on_failure,
        **policy,
    }
    client = dict(client or {})
    if handler is not None:
        client["transport"] = Intercept(fake.app, handler).transport()
    elif "base_url" not in client:
        client["transport"] = fake.transport()
    recorder = Recorder()
    async with (
        service_client(**client) as service,
        open_monitor(policy=Policy(**settings), service=service) as monitor,
        trio.open_nursery() as side,
    ):
        await side.start(recorder.run, monitor)
        await monitor.monitor_run(RUN)

        def ended(events: list[TelemetryEvent]) -> bool:
            return any(e.name in ("completed", "exhausted") for e in events)

        with trio.fail_after(3600):
            await recorder.wait_for(ended)
            await monitor.executor.wait_idle()
        side.cancel_scope.cancel()
    yield Scenario(fake=fake, calls=calls, recorder=recorder)


def once(method: str, route: str, action: Any) -> Any:
    """An intercept handler running ``action()`` before the first such request."""
    done = False

    async def handler(request_method: str, request_path: str, body: Any) -> None:
        nonlocal done
        if not done and (request_method, request_path) == (method, route):
            done = True
            action()
        await trio.lowlevel.checkpoint()

    return handler


@pytest.mark.parametrize("gone", ["deleted", "expired"])
async def test_newest_checkpoint_gone_before_restore_falls_back(gone, autojump_clock):
    """Deleted or expired between poll and restore: the next older one is used."""
    fake = fake_with_run()
    vanish = fake.delete_checkpoint if gone == "deleted" else fake.expire_checkpoint
    handler = once("POST", "/api/v1/weights_info", lambda: vanish(NEWEST))
    async with recovering(fake, handler=handler) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", NEWEST),
        ("checkpoint_selected", MIDDLE),
        ("client_created", 1),
        ("completed", 1),
    ]
    assert [r.tinker_path for r in fake.restore_log] == [MIDDLE]
    assert [c.tinker_path for _, _, c in scenario.calls.recovered] == [MIDDLE]
    assert scenario.calls.failed == []


async def test_expired_newest_checkpoint_is_skipped_without_a_request(
    autojump_clock,
):
    """An expired checkpoint reported by the poll is never tried."""
    fake = fake_with_run()
    fake.expire_checkpoint(NEWEST)
    async with recovering(fake) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", MIDDLE),
        ("client_created", 1),
        ("completed", 1),
    ]
    asked = [r.json["tinker_path"] for r in fake.requests if "weights_info" in r.path]
    assert NEWEST not in asked
    assert fake.restores == {RUN: 1}


async def test_load_failing_as_user_error_falls_back(autojump_clock):
    """A ``user`` failure of load_weights (checkpoint gone meanwhile): fallback."""
    fake = fake_with_run()
    handler = once(
        "POST", "/api/v1/load_weights", lambda: fake.delete_checkpoint(NEWEST)
    )
    async with recovering(fake, handler=handler) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", NEWEST),
        ("checkpoint_selected", MIDDLE),
        ("client_created", 1),
        ("completed", 1),
    ]
    assert [r.json["path"] for r in scenario.loads()] == [NEWEST, MIDDLE]
    assert [r.tinker_path for r in fake.restore_log] == [MIDDLE]


async def test_load_failing_as_user_error_without_fallback_is_exhausted(
    autojump_clock,
):
    """Without fallback a ``user`` failure ends the recovery at once."""
    fake = fake_with_run()
    handler = once(
        "POST", "/api/v1/load_weights", lambda: fake.delete_checkpoint(NEWEST)
    )
    async with recovering(fake, handler=handler, fallback=False) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", NEWEST),
        ("failed", CheckpointUnavailableError),
        ("exhausted", CheckpointUnavailableError),
    ]
    [(run_id, error)] = scenario.calls.failed
    assert run_id == RUN
    assert isinstance(error, CheckpointUnavailableError)
    assert error.path == NEWEST
    assert scenario.calls.recovered == []
    assert fake.restores == {}


async def test_every_checkpoint_unusable_is_exhausted_with_the_last_error(
    autojump_clock,
):
    """With fallback but no older candidate left, the recovery is exhausted."""
    fake = fake_with_run("ckpt-0001")

    async def handler(method: str, route: str, body: Any) -> None:
        if route == "/api/v1/load_weights":
            for checkpoint in fake.checkpoints(RUN):
                fake.delete_checkpoint(checkpoint.tinker_path)
        await trio.lowlevel.checkpoint()

    async with recovering(fake, handler=handler) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", OLDEST),
        ("failed", CheckpointUnavailableError),
        ("exhausted", CheckpointUnavailableError),
    ]
    assert len(scenario.calls.failed) == 1
    assert fake.restores == {}


async def test_run_without_checkpoints_is_exhausted_at_once(autojump_clock):
    """No checkpoint at all cannot succeed on retry: exhausted after one attempt."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run(RUN, checkpoints=(), corrupted=True)
    async with recovering(fake) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("failed", NoCheckpointError),
        ("exhausted", NoCheckpointError),
    ]
    assert [type(e) for _, e in scenario.calls.failed] == [NoCheckpointError]


def server_failures(count: float) -> Any:
    """An intercept handler failing the first ``count`` loads as ``server``.

    The simulator never sees those loads: like a real server-side failure,
    they restore nothing.
    """
    failed = 0

    async def handler(method: str, route: str, body: Any) -> Any:
        nonlocal failed
        await trio.lowlevel.checkpoint()
        if route == "/api/v1/load_weights" and failed < count:
            failed += 1
            return 200, {"request_id": f"injected-{failed}"}
        request_id = (body or {}).get("request_id", "")
        if route == "/api/v1/retrieve_future" and request_id.startswith("injected-"):
            return 200, {"error": "worker lost", "category": "server"}
        return None

    return handler


async def test_load_failing_as_server_error_is_retried_after_backoff(autojump_clock):
    """``server`` failures are retried after 5 s, then 10 s; the third succeeds."""
    fake = fake_with_run()
    async with recovering(fake, handler=server_failures(2)) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", NEWEST),
        ("failed", RequestFailedError),
        ("started", 2),
        ("checkpoint_selected", NEWEST),
        ("failed", RequestFailedError),
        ("started", 3),
        ("checkpoint_selected", NEWEST),
        ("client_created", 3),
        ("completed", 3),
    ]
    failed, started = scenario.times("failed"), scenario.times("started")
    assert [b - a for a, b in zip(failed, started[1:], strict=True)] == [5.0, 10.0]
    assert fake.restores == {RUN: 1}
    assert scenario.calls.failed == []
    [(_, client, checkpoint)] = scenario.calls.recovered
    assert checkpoint.tinker_path == NEWEST
    assert client.model_id.endswith(":train:2")


async def test_load_failing_as_server_error_every_time_is_exhausted(autojump_clock):
    """After ``max_attempts`` server failures: ``exhausted`` and ``on_failure``."""
    fake = fake_with_run()
    handler = server_failures(math.inf)
    async with recovering(fake, handler=handler, max_attempts=3) as scenario:
        pass
    names = [name for name, _ in scenario.steps()]
    assert names == [
        "detected",
        *["started", "checkpoint_selected", "failed"] * 3,
        "exhausted",
    ]
    [(run_id, error)] = scenario.calls.failed
    assert (run_id, type(error), error.category) == (RUN, RequestFailedError, "server")
    assert error.retryable
    assert fake.restores == {}


async def test_load_hanging_past_its_timeout_is_retried_as_the_same_load(
    autojump_clock,
):
    """A load whose result outlasts the 600 s future timeout is retried once
    after backoff, as the same operation: one restore, not two."""
    fake = fake_with_run()
    fake.future_delay = 900.0
    fake.long_poll = 5.0
    async with recovering(fake) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", NEWEST),
        ("failed", APITimeoutError),
        ("started", 2),
        ("checkpoint_selected", NEWEST),
        ("client_created", 2),
        ("completed", 2),
    ]
    assert scenario.times("failed") == [600.0]
    assert scenario.times("started") == [0.0, 605.0]
    assert scenario.times("completed")[0] >= 900.0
    loads = scenario.loads()
    assert len(loads) == 2
    assert loads[0].idempotency_key == loads[1].idempotency_key
    assert loads[0].json == loads[1].json
    assert fake.restores == {RUN: 1}
    assert len(scenario.calls.recovered) == 1


async def test_load_hanging_forever_is_exhausted_without_a_second_load(
    autojump_clock,
):
    """A load that never finishes: every attempt repeats it; then exhausted."""
    fake = fake_with_run()
    fake.future_delay = math.inf
    fake.long_poll = 5.0
    async with recovering(fake, max_attempts=3) as scenario:
        pass
    assert [name for name, _ in scenario.steps()] == [
        "detected",
        *["started", "checkpoint_selected", "failed"] * 3,
        "exhausted",
    ]
    assert scenario.times("failed") == [600.0, 1205.0, 1815.0]
    [(_, error)] = scenario.calls.failed
    assert isinstance(error, APITimeoutError)
    loads = scenario.loads()
    assert len(loads) == 3
    assert len({r.idempotency_key for r in loads}) == 1
    assert len({r.json["model_seq_id"] for r in loads}) == 1


@pytest.mark.parametrize("http_retries", [0, 2])
async def test_load_hanging_past_the_http_timeout_restores_once(http_retries):
    """Over loopback, a load_weights request outlasting ``Config.timeout`` is
    retried (by HTTP or by the executor) with the same key: one restore."""
    fake = fake_with_run()
    fake.script(Fault.latency(1.5, path="/api/v1/load_weights"))
    async with trio.open_nursery() as server:
        url = await server.start(serve_fake_tinker, fake)
        client = {
            "base_url": url,
            "settings": FAST,
            "timeout": 0.3,
            "max_retries": http_retries,
        }
        with trio.fail_after(30):
            async with recovering(
                fake, client=client, backoff=0.05, max_backoff=0.05
            ) as scenario:
                pass
        server.cancel_scope.cancel()
    expected = [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", NEWEST),
        ("client_created", 1),
        ("completed", 1),
    ]
    if http_retries == 0:
        expected[3:3] = [
            ("failed", APITimeoutError),
            ("started", 2),
            ("checkpoint_selected", NEWEST),
        ]
        expected[-2:] = [("client_created", 2), ("completed", 2)]
    assert scenario.steps() == expected
    loads = scenario.loads()
    assert [r.fault for r in loads] == ["latency", None]
    assert loads[0].idempotency_key == loads[1].idempotency_key
    assert fake.restores == {RUN: 1}


async def test_best_skips_a_checkpoint_whose_metric_is_out_of_range(autojump_clock):
    """A metric no float can hold (a 400-digit JSON number) is no candidate;
    the best of the others is restored."""
    fake = fake_with_run("ckpt-0000")
    for name, loss in [
        ("ckpt-0001", "0.5"),
        ("ckpt-0002", 10**400),
        ("ckpt-0003", 0.9),
    ]:
        fake.add_checkpoint(RUN, name, metadata={"loss": loss})
    async with recovering(fake, checkpoint_strategy=Best()) as scenario:
        pass
    assert scenario.steps() == [
        ("detected", None),
        ("started", 1),
        ("checkpoint_selected", path("ckpt-0001")),
        ("client_created", 1),
        ("completed", 1),
    ]
    assert [r.tinker_path for r in fake.restore_log] == [path("ckpt-0001")]
