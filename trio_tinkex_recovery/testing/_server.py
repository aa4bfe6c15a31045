"""`serve_fake_tinker`: the simulator on a real socket, via hypercorn's Trio worker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._asgi import bind_socket, serve_asgi

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
    sock = await bind_socket(host, port)
    await serve_asgi(
        fake.app.for_server(),
        sock,
        logger=logging.getLogger(LOGGER_NAME),
        keep_alive_max_requests=KEEP_ALIVE_MAX_REQUESTS,
        graceful_timeout=graceful_timeout,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
