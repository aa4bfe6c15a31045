"""`serve_fake_tinker`: the simulator on a real socket, via hypercorn's Trio worker."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, cast

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._fake import FakeTinker

__all__ = ["serve_fake_tinker"]

#: The logger hypercorn reports to (start-up, and any crash of the app).
LOGGER_NAME = "trio_tinkex_recovery.testing.server"

#: Requests per connection before hypercorn closes it (its default is 1,000).
KEEP_ALIVE_MAX_REQUESTS = 2**31


async def serve_fake_tinker(
    fake: FakeTinker,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    graceful_timeout: float = 0.5,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` over HTTP/1.1 with hypercorn until cancelled.

    Use it with ``nursery.start``, which returns the base URL with the port
    actually bound (``port=0`` picks a free one)::

        base_url = await nursery.start(serve_fake_tinker, fake)

    Needs the ``testing`` extra (hypercorn).  Cancellation stops the server
    at once; ``shutdown_trigger`` (an async callable) stops it gracefully
    when it returns, letting requests in flight finish for up to
    ``graceful_timeout`` seconds.

    Args:
        fake: The simulator to serve.
        host: The address to bind, e.g. ``"127.0.0.1"`` or ``"::1"``.
        port: The port to bind; 0 for any free port.
        graceful_timeout: Seconds to let requests finish on a graceful stop.
        shutdown_trigger: Returns when the server should stop gracefully.
        task_status: Reports the base URL, e.g. ``"http://127.0.0.1:41234"``.

    Raises:
        OSError: The address cannot be bound.
    """
    # Imported here: hypercorn is an optional dependency (the testing extra),
    # and the in-process simulator works without it.
    from hypercorn.config import Config
    from hypercorn.trio import serve

    # Bind here rather than in hypercorn: a busy port then raises a plain
    # OSError, and hypercorn adopts the bound socket through an fd:// bind.
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
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger(LOGGER_NAME)

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(
            cast("Any", fake.app.for_server()),  # hypercorn's ASGI types are narrower
            config,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
            mode="asgi",
        )

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(run)
        task_status.started(urls[0])
