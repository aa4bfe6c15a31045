"""The native client against a hostile HTTP server on loopback.

Each test serves one misbehaviour from raw Trio sockets and checks what a
user of ``open_service_client(...).create_rest_client()`` sees: the right
error, in time, with the bytes read bounded and the API key nowhere.
Real sockets and the real clock: short deadlines keep each test fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from trio_tinkex_recovery import (
    APITimeoutError,
    AuthenticationError,
    Config,
    NotFoundError,
    ResponseTooLargeError,
    TinkerAPIError,
    open_service_client,
)

if TYPE_CHECKING:
    from trio_tinkex_recovery import TrainingRun

KEY = "tml-HostileTestKey_0123456789-abcdefXYZ"
SECRET = KEY.removeprefix("tml-")
RUN_JSON = {
    "training_run_id": "run-1",
    "base_model": "m",
    "model_owner": "o",
    "is_lora": True,
    "corrupted": False,
    "lora_rank": 8,
    "last_request_time": "2025-01-01T00:00:00Z",
    "last_checkpoint": None,
    "last_sampler_checkpoint": None,
    "user_metadata": None,
}

Behaviour = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def read_head(stream: trio.SocketStream) -> bytes:
    """The request line and headers (the client sends GETs, without bodies)."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(65536)
        if not data:
            break
        head += data
    return head


def api_key_of(head: bytes) -> str:
    """The X-API-Key the client sent, as the server read it."""
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "x-api-key":
            return value.strip()
    return ""


def response(status: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Hostile:
    """A loopback server answering every request with one behaviour."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[float, bytes]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            head = await read_head(stream)
            self.requests.append((trio.current_time(), head))
            await self.behaviour(stream, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up, as it should
        finally:
            await stream.aclose()

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(
            partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        return f"http://127.0.0.1:{port}"


class Counting(httpx.AsyncBaseTransport):
    """The default network transport, counting the body bytes it hands up."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = await self.inner.handle_async_request(request)
        assert isinstance(answer.stream, httpx.AsyncByteStream)
        return httpx.Response(
            answer.status_code,
            headers=answer.headers,
            stream=CountedStream(answer.stream, self),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, owner: Counting) -> None:
        self.stream = stream
        self.owner = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            self.owner.received += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


async def get_run(
    nursery: trio.Nursery,
    behaviour: Behaviour,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **config: object,
) -> tuple[TrainingRun | TinkerAPIError, float, Hostile]:
    """GET a run from a hostile server: what the user gets, and how long it took."""
    server = Hostile(behaviour)
    url = await server.start(nursery)
    options: dict[str, object] = {"timeout": 0.5, "max_retries": 0, **config}
    started = trio.current_time()
    with trio.fail_after(10):
        async with open_service_client(
            Config(api_key=KEY, base_url=url, **options),
            transport=transport,
        ) as service:
            try:
                result: (
                    TrainingRun | TinkerAPIError
                ) = await service.create_rest_client().get_training_run("run-1")
            except TinkerAPIError as exc:
                result = exc
    return result, trio.current_time() - started, server


async def trickled_headers(stream: trio.SocketStream, head: bytes) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: ":
        await stream.send_all(bytes([byte]))
        await trio.sleep(0.05)
    while True:  # the headers never end
        await stream.send_all(b"x")
        await trio.sleep(0.05)


async def endless_chunked_body(stream: trio.SocketStream, head: bytes) -> None:
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    )
    while True:  # a byte every 10 ms, never the last chunk
        await stream.send_all(b"1\r\n \r\n")
        await trio.sleep(0.01)


@pytest.mark.parametrize(
    "behaviour",
    [trickled_headers, endless_chunked_body],
    ids=["trickled-headers", "endless-chunked-body"],
)
async def test_a_trickling_server_times_out_within_the_timeout(nursery, behaviour):
    """Bytes that keep coming but never finish the answer: a timeout at 0.5 s,
    though no single read ever waits long."""
    result, elapsed, _ = await get_run(nursery, behaviour)
    assert isinstance(result, APITimeoutError)
    assert result.retryable is True
    assert "no complete answer within 0.5 s" in str(result)
    assert 0.5 <= elapsed < 10.0  # loose: shared cores


async def test_a_trickling_server_is_retried_by_the_usual_rules(nursery):
    """A timed-out attempt is retried: two attempts, then the timeout."""
    result, elapsed, server = await get_run(
        nursery, endless_chunked_body, timeout=0.3, max_retries=1
    )
    assert isinstance(result, APITimeoutError)
    assert "(after 1 retries)" in str(result)
    assert len(server.requests) == 2
    assert elapsed < 10.0  # loose: shared cores


async def huge_chunked_body(stream: trio.SocketStream, head: bytes) -> None:
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    while True:  # flat out, for ever
        await stream.send_all(chunk)


async def huge_declared_body(stream: trio.SocketStream, head: bytes) -> None:
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n"
    )
    while True:
        await stream.send_all(b" " * 0x4000)


LIMIT = 100_000
#: What may be in flight past the limit: httpcore reads 64 KiB at a time.
SLACK = 2 * 65536


@pytest.mark.parametrize(
    ("behaviour", "most"),
    [(huge_chunked_body, LIMIT + SLACK), (huge_declared_body, 0)],
    ids=["chunked-flat-out", "declared-10-GB"],
)
async def test_a_huge_body_fails_unretried_with_bounded_reading(
    nursery, behaviour, most
):
    """An endless flood (or a declared 10 GB) stops at max_response_bytes: a
    final error, the connection closed, and only so many bytes taken in."""
    counting = Counting()
    result, elapsed, server = await get_run(
        nursery,
        behaviour,
        transport=counting,
        timeout=5,
        max_retries=3,
        max_response_bytes=LIMIT,
    )
    assert isinstance(result, ResponseTooLargeError)
    assert result.retryable is False
    assert len(server.requests) == 1
    assert counting.received <= most
    assert elapsed < 30  # loose: the error type says it was no timeout


def echo(status: str, make_body: Callable[[str], str]) -> Behaviour:
    """Answer ``status`` with a body built around the key the client sent."""

    async def behaviour(stream: trio.SocketStream, head: bytes) -> None:
        body = make_body(api_key_of(head)).encode()
        await stream.send_all(response(status, body))

    return behaviour


def url_encoded(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


ECHOES = {
    "padded-raw": ("401 Unauthorized", lambda key: "x" * 280 + key),
    "padded-detail": (
        "401 Unauthorized",
        lambda key: json.dumps({"detail": "p" * 285 + key}),
    ),
    "json-escaped": (
        "401 Unauthorized",
        lambda key: '{"detail": "bad key ' + json_escaped(key) + '"}',
    ),
    "url-encoded-path": (
        "404 Not Found",
        lambda key: json.dumps(
            {"detail": f"no route /api/v1/{url_encoded(key)}/training_runs/run-1"}
        ),
    ),
    "plain-path": (
        "404 Not Found",
        lambda key: json.dumps({"detail": f"no route /api/v1/{key}/training_runs"}),
    ),
}


def pieces_of_key(text: str) -> list[str]:
    """The runs of 8 characters of the key's secret found in ``text``."""
    windows = {SECRET[i : i + 8] for i in range(len(SECRET) - 7)}
    return [w for w in windows if w in text or url_encoded(w) in text.upper()]


@pytest.mark.parametrize("name", sorted(ECHOES))
async def test_an_echoed_key_shows_nowhere(nursery, caplog, name):
    """The key echoed back (padded, JSON-escaped, URL-encoded) is absent from
    the error, its repr, its cause and every log record."""
    caplog.set_level(logging.DEBUG)
    status, make_body = ECHOES[name]
    result, _, server = await get_run(nursery, echo(status, make_body))
    assert api_key_of(server.requests[0][1]) == KEY  # it did get the key
    assert isinstance(result, AuthenticationError | NotFoundError)
    seen = [str(result), repr(result), str(result.__cause__), caplog.text]
    seen += [str(record.args) for record in caplog.records]
    for text in seen:
        assert pieces_of_key(text) == [], text


async def test_a_key_echoed_in_data_never_reaches_the_caller(nursery, caplog):
    """A success answer echoing the key in its data hands back masked data."""
    caplog.set_level(logging.DEBUG)

    def body(key: str) -> str:
        return json.dumps({**RUN_JSON, "user_metadata": {"note": f"key={key}"}})

    result, _, _ = await get_run(nursery, echo("200 OK", body))
    assert not isinstance(result, TinkerAPIError)
    assert result.user_metadata == {"note": "key=****"}
    assert pieces_of_key(repr(result) + caplog.text) == []


def retry_after(value: str) -> Behaviour:
    """503 with ``Retry-After: value`` the first time, the run after that."""
    answers = [
        response("503 Service Unavailable", b"{}", f"Retry-After: {value}"),
        response("200 OK", json.dumps(RUN_JSON).encode()),
    ]

    async def behaviour(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(answers.pop(0) if len(answers) > 1 else answers[0])

    return behaviour


@pytest.mark.parametrize(
    "value",
    ["-10", "-1e308", "nan", "inf", "1e400", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"],
)
async def test_an_absurd_retry_after_leaves_the_backoff(nursery, value):
    """A negative, non-numeric, infinite or past Retry-After is ignored: the
    retry waits the backoff (0.375-0.5 s), neither 0 nor forever."""
    result, _, server = await get_run(nursery, retry_after(value), max_retries=1)
    assert not isinstance(result, TinkerAPIError), result
    assert result.training_run_id == "run-1"
    (first, _), (second, _) = server.requests
    # Not at once (the backoff was waited), and far below the 60 s cap a
    # honoured value would give: a loose bound, for busy shared cores.
    assert 0.3 <= second - first < 10.0
