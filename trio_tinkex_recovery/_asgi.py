"""Serving an ASGI app with hypercorn's Trio worker, on a socket bound first."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import trio

if TYPE_CHECKING:
    import logging

__all__ = [
    "ASGIApp",
    "Receive",
    "Scope",
    "Send",
    "bind_socket",
    "lifespan",
    "serve_asgi",
]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI ``lifespan`` scope: nothing to start, nothing to stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host`` and ``port`` (0: any free port).

    Bound here rather than in hypercorn, so that a busy port is a plain
    `OSError` raised before anything starts.

    Raises:
        OSError: The address cannot be bound.
    """
    family, kind, proto, _, address = (
        await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_asgi(
    app: ASGIApp,
    sock: socket.socket,
    *,
    logger: logging.Logger,
    keep_alive_max_requests: int | None = None,
    graceful_timeout: float | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 on ``sock`` until cancelled (needs hypercorn).

    Takes ``sock`` over (hypercorn adopts it through an ``fd://`` bind) and
    reports the base URL with the port actually bound.  Cancellation stops
    at once; ``shutdown_trigger`` returning stops gracefully, letting
    requests finish for ``graceful_timeout`` seconds.  ``None`` options keep
    hypercorn's defaults.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logger
    if keep_alive_max_requests is not None:
        config.keep_alive_max_requests = keep_alive_max_requests
    if graceful_timeout is not None:
        config.graceful_timeout = graceful_timeout

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        # hypercorn's ASGI types are narrower than these plain mappings.
        await serve(
            cast("Any", app),
            config,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
            mode="asgi",
        )

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(run)
        task_status.started(urls[0])
