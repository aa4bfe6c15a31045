"""The simulator's raw ASGI application (no web framework).

HTTP plumbing only: reading the request, recording it (key masked),
injecting faults, checking ``X-API-Key``, honouring ``X-Idempotency-Key``,
and encoding the answer.  What each endpoint does is decided by the
`FakeTinker` it serves (``FakeTinker._dispatch``).

A dropped connection cannot be expressed in ASGI, so it is simulated per
server: in process (``httpx.ASGITransport``) the app raises
``httpx.RemoteProtocolError``, the error httpx itself raises when a server
disconnects; under hypercorn the app starts a ``1xx`` informational answer
and returns, which makes hypercorn close the connection with no response.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs
import httpx
import trio

from ._records import MASK, RecordedRequest

if TYPE_CHECKING:
    from ._fake import FakeTinker
    from ._faults import Fault

__all__ = ["FakeTinkerApp", "Reply", "WireError", "WireRequest"]

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Header names whose values never reach the request log.
_SECRET_HEADERS = frozenset({"x-api-key", "authorization"})

#: What a ``"malformed"`` fault answers.
_MALFORMED_BODY = b"{malformed json"

#: An informational status that opens no response: hypercorn then closes.
_DROP_STATUS = 199


class _NoBody:
    """The JSON body of a request that had none."""


NO_BODY: Any = _NoBody()


@attrs.frozen
class WireRequest:
    """A request as the endpoints see it."""

    #: The method, upper case.
    method: str
    #: The URL path (percent-decoded).
    path: str
    #: The query parameters.
    query: dict[str, str]
    #: The headers, names in lower case, values unmasked.
    headers: dict[str, str]
    #: The decoded JSON body; `NO_BODY` when the body was empty.
    json: Any
    #: Why the body is not JSON, if it is not.
    json_error: str | None = None


@attrs.frozen
class Reply:
    """An answer: a status, a JSON body and extra headers."""

    #: The HTTP status.
    status: int
    #: The JSON value of the body.
    body: Any
    #: Extra headers (the content type and length are added on sending).
    headers: tuple[tuple[str, str], ...] = ()
    #: Raw bytes to send instead of the encoded `body` (mangled answers).
    raw: bytes | None = None

    def encode(self) -> bytes:
        """The body's bytes."""
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, separators=(",", ":")).encode()


class WireError(Exception):
    """Raised by an endpoint to answer an HTTP error with a JSON ``detail``."""

    def __init__(
        self, status: int, detail: str, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers

    def reply(self) -> Reply:
        """The error as an answer."""
        return Reply(self.status, {"detail": self.detail}, self.headers)


class _Drop(Exception):
    """Internal: close the connection without an answer."""


@attrs.define(eq=False)
class _Idempotent:
    """The first request seen with an idempotency key, and its answer."""

    body: Any
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: Reply | None = None


class FakeTinkerApp:
    """The ASGI application over a `FakeTinker` (its ``app`` attribute).

    Args:
        fake: The state it serves.
        served: ``True`` when hypercorn serves it (drops close the
            connection) rather than ``httpx.ASGITransport`` (drops raise).
    """

    def __init__(self, fake: FakeTinker, *, served: bool = False) -> None:
        self._fake = fake
        self._served = served

    def __repr__(self) -> str:
        return f"<FakeTinkerApp served={self._served} fake={self._fake!r}>"

    def for_server(self) -> FakeTinkerApp:
        """The same app, dropping connections the way a real server does."""
        return FakeTinkerApp(self._fake, served=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (``http`` or ``lifespan``)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here: returning closes the connection.
        request = await self._read(scope, receive)
        fake = self._fake
        if request.path.startswith("/_fake/"):
            await self._send(send, await fake._admin(request))
            return
        fault = fake.faults.pick(request.method, request.path)
        fake._record(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={
                    name: (MASK if name in _SECRET_HEADERS else value)
                    for name, value in request.headers.items()
                },
                json=None if request.json is NO_BODY else request.json,
                time=trio.current_time(),
                fault=None if fault is None else fault.kind,
            )
        )
        if fake.base_latency:
            await trio.sleep(fake.base_latency)
        try:
            reply = await self._respond(request, fault)
        except _Drop:
            await self._drop(scope, send)
            return
        await self._send(send, reply)

    async def _respond(self, request: WireRequest, fault: Fault | None) -> Reply:
        if fault is not None and not fault.acts_first:
            if fault.kind == "latency":
                await trio.sleep(fault.delay)
            elif fault.kind == "status":
                assert fault.status is not None
                headers: tuple[tuple[str, str], ...] = ()
                if fault.retry_after is not None:
                    headers = (("retry-after", f"{fault.retry_after:g}"),)
                return Reply(
                    fault.status,
                    {"detail": f"injected fault: HTTP {fault.status}"},
                    headers,
                )
            elif fault.kind == "drop":
                raise _Drop
        key = request.headers.get("x-api-key", "")
        if not key:
            return WireError(401, "missing X-API-Key header").reply()
        if self._fake.api_key is not None and key != self._fake.api_key:
            return WireError(401, "invalid API key").reply()
        reply = await self._act(request)
        if fault is not None and fault.acts_first:
            if fault.kind == "drop":
                raise _Drop
            if 200 <= reply.status < 300:
                reply = _spoil(reply, fault)
        return reply

    async def _act(self, request: WireRequest) -> Reply:
        """Dispatch once per idempotency key (non-GET requests that carry one)."""
        fake = self._fake
        key = request.headers.get("x-idempotency-key")
        if request.method == "GET" or not key:
            return await fake._dispatch(request)
        ident = (request.method, request.path, key)
        store = fake._idempotency
        while (entry := store.get(ident)) is not None:
            if entry.reply is not None:
                if entry.body != request.json:
                    return WireError(
                        422, "X-Idempotency-Key reused with a different request body"
                    ).reply()
                fake.idempotent_replays += 1
                return entry.reply
            await entry.done.wait()  # the first is in flight: share its answer
        entry = _Idempotent(body=request.json)
        store[ident] = entry
        try:
            entry.reply = await fake._dispatch(request)
        finally:
            if entry.reply is None:
                del store[ident]  # never answered: let a retry act
            entry.done.set()
        return entry.reply

    async def _read(self, scope: Scope, receive: Receive) -> WireRequest:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        value: Any = NO_BODY
        error = None
        if body:
            try:
                value = json.loads(body)
            except ValueError as exc:
                error = f"request body is not JSON: {exc}"
        headers = {
            name.decode("latin-1").lower(): val.decode("latin-1")
            for name, val in scope.get("headers", [])
        }
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        return WireRequest(
            method=scope["method"].upper(),
            path=scope["path"],
            query=query,
            headers=headers,
            json=value,
            json_error=error,
        )

    @staticmethod
    async def _send(send: Send, reply: Reply) -> None:
        payload = reply.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        headers.extend(
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
        )
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _drop(self, scope: Scope, send: Send) -> None:
        if not self._served:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.",
                request=_request_of(scope),
            )
        # hypercorn writes the 1xx head, sees the app end without a final
        # response and closes the connection; clients skip 1xx heads, then
        # see the connection close with no response.
        await send(
            {"type": "http.response.start", "status": _DROP_STATUS, "headers": []}
        )

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _request_of(scope: Scope) -> httpx.Request:
    """The request an in-process client sent, as httpx errors carry it."""
    host = dict(scope.get("headers", [])).get(b"host", b"fake-tinker")
    base = httpx.URL(f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}")
    url = base.copy_with(path=scope["path"], query=scope.get("query_string", b""))
    return httpx.Request(scope["method"], url)


def _spoil(reply: Reply, fault: Fault) -> Reply:
    """A successful answer, spoilt by a fault that strikes after the action."""
    if fault.kind == "malformed":
        return attrs.evolve(reply, raw=_MALFORMED_BODY)
    if fault.kind == "truncated":
        payload = reply.encode()
        return attrs.evolve(reply, raw=payload[: len(payload) // 2])
    if fault.kind == "missing_fields" and isinstance(reply.body, dict) and reply.body:
        fields = fault.fields or (next(iter(reply.body)),)
        body = {k: v for k, v in reply.body.items() if k not in fields}
        return attrs.evolve(reply, body=body)
    return reply
