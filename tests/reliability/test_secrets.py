"""Secrets: a recognisable fake key never shows, whatever happens.

The end-to-end scenarios run with a canary key while every log record (all
loggers, DEBUG, with tracebacks) is captured.  Then the key, and its secret
part alone, must appear in no log record, no event (its repr, its JSON, the
full traceback of any error it carries), no repr of the objects a user
holds, no exception text, and no output of the command line, even when the
server rejects the key or echoes it back in error bodies.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import traceback
import urllib.parse
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import pytest
import trio

from trio_tinkex_recovery import (
    AuthenticationError,
    Config,
    Policy,
    TinkexRecoveryError,
    open_monitor,
    open_service_client,
)
from trio_tinkex_recovery.testing import (
    FakeTinker,
    Fault,
    send_json,
    serve_fake_tinker,
)

from ._support import (
    BASE,
    FAST,
    KEY,
    LogCapture,
    Recorder,
    chaos_faults,
    inject,
    service_client,
)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

#: The part of the key after ``tml-``: it must not show either.
SECRET = KEY.removeprefix("tml-")


def error_texts(error: BaseException) -> Iterator[str]:
    """Every text an error shows: str, repr, and the whole traceback chain."""
    yield "".join(traceback.format_exception(error))
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from map(str, current.args)
        current = current.__cause__ or current.__context__


def event_texts(recorder: Recorder) -> Iterator[str]:
    for event in recorder.events:
        yield repr(event)
        yield json.dumps(event.to_json())
        for value in event.metadata.values():
            yield repr(value)
            if isinstance(value, BaseException):
                yield from error_texts(value)


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert SECRET not in text


@pytest.fixture
def logs():
    """Every log record of every logger, at DEBUG, formatted with tracebacks."""
    capture = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)


class EchoKey:
    """ASGI middleware: some requests fail with the key echoed in the body."""

    def __init__(self, app: Any, *, rate: float, seed: int) -> None:
        self.app = app
        self.rate = rate
        self.rng = random.Random(seed)
        self.echoed = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.rng.random() >= self.rate:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key", b"").decode()
        status = self.rng.choice([400, 401, 500, 503])
        self.echoed += 1
        await send_json(
            send, status, {"detail": f"key {key} refused; you sent {key!r}"}
        )


def corrupted_runs(
    fake: FakeTinker, count: int, bad: int
) -> tuple[list[str], set[str]]:
    ids = [f"secret-{i}" for i in range(count)]
    for run_id in ids:
        fake.add_run(run_id)
    corrupted = set(ids[:bad])
    for run_id in corrupted:
        fake.corrupt(run_id)
    return ids, corrupted


async def watch_until_settled(
    service: Any, ids: list[str], corrupted: set[str], *, budget: float
) -> tuple[Recorder, list[str]]:
    """Watch ``ids`` until every corrupted run's recovery ended; user reprs."""
    clients: list[Any] = []

    def on_recovery(old: Any, new: Any, checkpoint: Any) -> None:
        clients.append(new)

    policy = Policy(
        enabled=True,
        jitter=0,
        poll_interval=1.0,
        backoff=0.1,
        max_backoff=0.5,
        max_attempts=20,
        on_recovery=on_recovery,
    )
    recorder = Recorder()
    async with (
        # One GET per poll: the most requests, so the most echoed errors.
        open_monitor(policy=policy, service=service, polling="each") as monitor,
        trio.open_nursery() as side,
    ):
        await side.start(recorder.run, monitor)
        for run_id in ids:
            await monitor.monitor_run(run_id, metadata={"owner": "me"})
        with trio.fail_after(budget):
            await recorder.wait_for(
                lambda events: (
                    {e.run_id for e in events if e.name in ("completed", "exhausted")}
                    >= corrupted
                )
            )
            await monitor.executor.wait_idle()
        reprs = [
            repr(monitor),
            repr(monitor.executor),
            repr(monitor.statistics()),
            repr(service),
            repr(service.create_rest_client()),
            *map(repr, monitor.executor.recoveries.values()),
            *map(repr, clients),
            *(repr(getattr(c, "_http", None)) for c in clients),
        ]
        side.cancel_scope.cancel()
    return recorder, reprs


async def test_in_process_chaos_with_echoing_server_never_shows_the_key(
    logs, autojump_clock
):
    """Faults of every kind and a server echoing the key: it never shows."""
    fake = FakeTinker(api_key=KEY, seed=7)
    ids, corrupted = corrupted_runs(fake, 8, 3)
    inject(fake, chaos_faults(timeout=None), 0.2)
    echo = EchoKey(fake.app, rate=0.1, seed=7)
    transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=echo)
    async with service_client(transport=transport, max_retries=2) as service:
        recorder, reprs = await watch_until_settled(
            service, ids, corrupted, budget=3600
        )
        await trio.sleep(30)  # a few more polls, faults and echoes included
    assert echo.echoed > 0
    assert recorder.count("poll_error") > 0
    assert recorder.count("completed") + recorder.count("exhausted") >= len(corrupted)
    assert_no_key(
        *logs.lines,
        *event_texts(recorder),
        *reprs,
        *map(repr, fake.requests),
        repr(Config(api_key=KEY)),
        str(Config(api_key=KEY)),
    )
    # The key was really in use: the simulator answered polls that needed it.
    assert recorder.count("detected") == len(corrupted)


async def test_rejected_key_never_shows(logs, autojump_clock):
    """A key the server refuses: errors and events say so without showing it."""
    fake = FakeTinker(api_key="tml-the-right-one")
    ids, _ = corrupted_runs(fake, 2, 1)
    errors: list[BaseException] = []
    async with service_client(fake) as service:
        try:
            await service.create_rest_client().get_training_run(ids[0])
        except AuthenticationError as exc:
            errors.append(exc)
        try:
            await service.create_training_client_from_state(
                f"tinker://{ids[0]}/weights/ckpt-0001"
            )
        except TinkexRecoveryError as exc:
            errors.append(exc)
        policy = Policy(enabled=True, jitter=0)
        recorder = Recorder()
        async with (
            open_monitor(policy=policy, service=service) as monitor,
            trio.open_nursery() as side,
        ):
            await side.start(recorder.run, monitor)
            await monitor.monitor_run(ids[0])
            await monitor.executor.recover(ids[1], service, policy)
            await monitor.executor.wait_idle()
            await trio.sleep(100)
            side.cancel_scope.cancel()
    assert [type(e) for e in errors] == [AuthenticationError, AuthenticationError]
    assert recorder.count("poll_error") >= 3
    assert recorder.names(ids[1])[-1] == "exhausted"
    assert_no_key(
        *logs.lines,
        *event_texts(recorder),
        *(text for error in errors for text in error_texts(error)),
    )


async def test_loopback_scenario_never_shows_the_key(logs):
    """Over real HTTP, with drops and timeouts too, the key never shows."""
    fake = FakeTinker(api_key=KEY, seed=3)
    ids, corrupted = corrupted_runs(fake, 6, 2)
    inject(fake, chaos_faults(timeout=0.5), 0.2)
    async with trio.open_nursery() as server:
        url = await server.start(serve_fake_tinker, fake)
        async with service_client(
            base_url=url, settings=FAST, timeout=0.5, max_retries=2
        ) as service:
            recorder, reprs = await watch_until_settled(
                service, ids, corrupted, budget=60
            )
        server.cancel_scope.cancel()
    assert recorder.count("completed") == len(corrupted)
    assert any(r.fault for r in fake.requests)
    assert_no_key(*logs.lines, *event_texts(recorder), *reprs)


# -- the command line ---------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_tinkex_recovery", *args]


async def run_cli(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    import os

    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TINKER_API_KEY", "TINKER_BASE_URL")
    }
    environment.update(env)
    with trio.fail_after(60):
        return await trio.run_process(
            args, capture_stdout=True, capture_stderr=True, check=False, env=environment
        )


@pytest.mark.parametrize(
    "output", ["--json", pytest.param("--plain", marks=pytest.mark.slow)]
)
async def test_cli_watch_never_shows_the_key(output):
    """``watch -vv`` through faults and recoveries: the key is not in its output."""
    fake = FakeTinker(api_key=KEY, seed=5)
    ids, _ = corrupted_runs(fake, 3, 1)
    fake.script(Fault.server_error(), Fault.drop(), Fault.malformed())
    async with trio.open_nursery() as server:
        url = await server.start(serve_fake_tinker, fake)
        result = await run_cli(
            cli(
                "watch",
                *ids,
                "--base-url",
                url,
                "--poll-interval",
                "0.2",
                "--backoff",
                "0.1",
                "--max-retries",
                "0",
                "--duration",
                "3",
                output,
                "-vv",
            ),
            {"TINKER_API_KEY": KEY},
        )
        server.cancel_scope.cancel()
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert fake.restores == {ids[0]: 1}
    assert "completed" in out + err
    assert_no_key(out, err)


@pytest.mark.parametrize(
    "key",
    [
        KEY,
        "tml-CANARY-d3adb33f-never-print-me with space",
        "CANARY-d3adb33f-never-print-me",
    ],
    ids=["rejected", "malformed", "no-prefix"],
)
async def test_cli_bad_key_exits_2_without_showing_it(key):
    """A rejected or malformed key: exit 2, and the key is not shown."""
    fake = FakeTinker(api_key="tml-the-right-one")
    ids, _ = corrupted_runs(fake, 1, 0)
    async with trio.open_nursery() as server:
        url = await server.start(serve_fake_tinker, fake)
        result = await run_cli(
            cli("watch", *ids, "--base-url", url, "--duration", "5", "-vv"),
            {"TINKER_API_KEY": key},
        )
        server.cancel_scope.cancel()
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 2, (out, err)
    assert_no_key(out, err)
    assert "CANARY" not in out + err


async def test_cli_simulate_does_not_print_its_key():
    """``simulate --api-key``: the key it accepts is not echoed."""
    result = await run_cli(
        cli("simulate", "--port", "0", "--api-key", KEY, "--duration", "0.5"), {}
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert out  # it did say how to use it
    assert_no_key(out, err)


# -- a server that mangles the key ---------------------------------------------


def mangled_keys() -> list[str]:
    """The key as a careless or hostile server might send it back."""
    escaped_letters = "".join(f"\\u{ord(c):04x}" if c in "AEe" else c for c in KEY)
    return [
        SECRET,  # without its prefix
        KEY.replace("-", "\\\\u002d", 1),  # a dash escaped twice
        escaped_letters,
        "".join(f"%{ord(c):02x}" for c in SECRET),
        "".join(f"%{ord(c):02X}" for c in KEY),
        json.dumps(json.dumps({"key": escaped_letters})),  # JSON in JSON
    ]


@pytest.mark.parametrize("spelling", range(len(mangled_keys())))
async def test_a_mangled_echo_of_the_key_never_shows(logs, spelling):
    """Without its prefix, escaped twice, letter by letter: still masked,
    before the message is shortened (the echo sits past the cut)."""
    echo = mangled_keys()[spelling]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        padding = "x" * 270  # the first echo straddles where a message is cut
        await send_json(send, 400, {"detail": f"{padding} you sent {echo} {echo}"})

    transport = httpx.ASGITransport(app=app)
    async with service_client(transport=transport, max_retries=0) as service:
        with pytest.raises(TinkexRecoveryError) as caught:
            await service.create_rest_client().get_training_run("run-1")
    texts = list(error_texts(caught.value))
    assert any("****" in text for text in texts)
    for text in [*texts, *logs.lines]:
        decoded = text
        for _ in range(3):  # whatever decoding a reader applies
            decoded = urllib.parse.unquote(decoded)
            decoded = decoded.encode("latin-1", "replace").decode("unicode_escape")
        assert SECRET[:8] not in text
        assert SECRET[:8] not in decoded


# -- a caller's own service ----------------------------------------------------


OTHER_KEY = "tml-another-key-for-the-service"


class LeakyRest:
    """A user's wrapper around the REST client: its errors name the key, and
    it reports a checkpoint path that holds the key."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def get_training_run(self, run_id: str) -> Any:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError(f"wrapper: GET {run_id} with key {KEY} failed")
        run = await self.inner.get_training_run(run_id)
        assert run.last_checkpoint is not None
        checkpoint = attrs.evolve(
            run.last_checkpoint, tinker_path=f"tinker://{run_id}/weights/{KEY}"
        )
        return attrs.evolve(run, last_checkpoint=checkpoint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("configured", ["config", "environment"])
async def test_a_callers_service_naming_the_key_never_shows_it(
    logs, autojump_clock, monkeypatch, configured
):
    """Errors and paths from a caller's own REST client are masked in every
    log line and every event, whatever component put them there."""
    # The service reaches Tinker with a key of its own: only the monitor's
    # configuration names KEY, the one the wrapper leaks.
    fake = FakeTinker(api_key=OTHER_KEY)
    ids, _ = corrupted_runs(fake, 1, 0)
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    config = None
    if configured == "config":
        config = Config(api_key=KEY)
    else:
        monkeypatch.setenv("TINKER_API_KEY", KEY)
    async with open_service_client(
        Config(api_key=OTHER_KEY, base_url=BASE), transport=fake.transport()
    ) as service:
        rest = LeakyRest(service.create_rest_client())
        recorder = Recorder(polls=True)
        policy = Policy(enabled=True, jitter=0, poll_interval=1.0)
        async with (
            open_monitor(
                policy=policy, config=config, service=service, rest=rest
            ) as monitor,
            trio.open_nursery() as side,
        ):
            await side.start(recorder.run, monitor)
            await monitor.monitor_run(ids[0])
            with trio.fail_after(60):
                await recorder.wait_for(
                    lambda events: {"polled", "poll_error"} <= {e.name for e in events}
                )
            side.cancel_scope.cancel()
    assert rest.calls >= 2
    assert any("****" in line for line in logs.lines)
    assert_no_key(*logs.lines, *event_texts(recorder))
