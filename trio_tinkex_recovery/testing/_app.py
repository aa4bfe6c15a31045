"""The simulator's raw ASGI application (no web framework).

HTTP plumbing only: reading the request, recording it (key masked),
injecting faults, checking ``X-API-Key``, honouring ``X-Idempotency-Key``,
and encoding the answer.  What each endpoint does is decided by
`Endpoints`, over the `TinkerState` the app serves.  `send_json` is the one
way a JSON answer is sent, here and in ASGI wrappers around the app.

A dropped connection cannot be expressed in ASGI, so it is simulated per
server: in process (``httpx.ASGITransport``) the app raises
``httpx.RemoteProtocolError``, the error httpx itself raises when a server
disconnects; under hypercorn the app starts a ``1xx`` informational answer
and returns, which makes hypercorn close the connection with no response.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs
import httpx
import trio

from .._asgi import lifespan
from ._endpoints import Endpoints
from ._records import MASK, RecordedRequest
from ._wire import NO_BODY, Reply, WireError, WireRequest, encode_json

if TYPE_CHECKING:
    from ._faults import Fault
    from ._state import TinkerState

__all__ = ["FakeTinkerApp", "send_json"]

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


async def send_json(
    send: Send,
    status: int,
    body: Any,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Answer an ASGI HTTP request with ``body`` as JSON.

    For ASGI wrappers around the simulator's app (e.g. a middleware that
    answers some requests itself).

    Args:
        send: The ASGI ``send`` callable of the request.
        status: The HTTP status.
        body: The JSON value to send.
        headers: Extra headers; the content type and length are added.
    """
    await _send_bytes(send, status, encode_json(body), headers)


async def _send_bytes(
    send: Send,
    status: int,
    payload: bytes,
    headers: Iterable[tuple[str, str]],
    content_type: str = "application/json",
) -> None:
    head = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(payload)).encode()),
    ]
    head.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class _Drop(Exception):
    """Internal: close the connection without an answer."""


@attrs.define(eq=False)
class _Idempotent:
    """The first request seen with an idempotency key, and its answer."""

    body: Any
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: Reply | None = None


class FakeTinkerApp:
    """The ASGI application over a simulator's state (``FakeTinker.app``).

    Args:
        state: The state it serves (a `FakeTinker`).
        served: ``True`` when hypercorn serves it (drops close the
            connection) rather than ``httpx.ASGITransport`` (drops raise).
    """

    def __init__(self, state: TinkerState, *, served: bool = False) -> None:
        self._state = state
        self._served = served
        self._endpoints = Endpoints(state)
        #: (method, path, key) -> the first request with that idempotency key
        self._idempotency: dict[tuple[str, str, str], _Idempotent] = {}

    def __repr__(self) -> str:
        return f"<FakeTinkerApp served={self._served} state={self._state!r}>"

    def for_server(self) -> FakeTinkerApp:
        """The same app, dropping connections the way a real server does."""
        app = FakeTinkerApp(self._state, served=True)
        app._idempotency = self._idempotency  # one cache, however it is served
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (``http`` or ``lifespan``)."""
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here: returning closes the connection.
        request = await self._read(scope, receive)
        state = self._state
        if request.path.startswith("/_fake/"):
            await self._send(send, await self._endpoints.admin(request))
            return
        fault = state.faults.pick(request.method, request.path)
        state.record(
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
        if state.base_latency:
            await trio.sleep(state.base_latency)
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
        if self._state.api_key is not None and key != self._state.api_key:
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
        dispatch = self._endpoints.dispatch
        key = request.headers.get("x-idempotency-key")
        if request.method == "GET" or not key:
            return await dispatch(request)
        ident = (request.method, request.path, key)
        store = self._idempotency
        while (entry := store.get(ident)) is not None:
            if entry.reply is not None:
                if entry.body != request.json:
                    return WireError(
                        422, "X-Idempotency-Key reused with a different request body"
                    ).reply()
                self._state.idempotent_replays += 1
                return entry.reply
            await entry.done.wait()  # the first is in flight: share its answer
        entry = _Idempotent(body=request.json)
        store[ident] = entry
        try:
            entry.reply = await dispatch(request)
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
            body=body,
        )

    @staticmethod
    async def _send(send: Send, reply: Reply) -> None:
        await _send_bytes(
            send, reply.status, reply.encode(), reply.headers, reply.content_type
        )

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
