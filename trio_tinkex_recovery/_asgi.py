"""`serve_asgi`: an ASGI app on a socket, via hypercorn's Trio worker."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import trio

if TYPE_CHECKING:
    import logging

__all__ = ["ASGIApp", "Receive", "Scope", "Send", "serve_asgi"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


async def serve_asgi(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    logger: logging.Logger,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 until cancelled; report the base URL.

    Needs hypercorn.  The socket is bound here rather than in hypercorn, so
    a busy port raises a plain `OSError`; hypercorn adopts it through an
    ``fd://`` bind.  ``port=0`` picks a free port: the URL given to
    ``task_status.started`` names the port actually bound.

    Raises:
        OSError: The address cannot be bound.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

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
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logger

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        # hypercorn's ASGI types are narrower than these plain mappings.
        await serve(cast("Any", app), config, task_status=task_status, mode="asgi")

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(run)
        task_status.started(urls[0])
