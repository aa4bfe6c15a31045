"""Tinker's futures protocol: waiting for the result of an accepted request.

Requests that take time (``load_weights``, ``save_weights``) answer at once
with a ``request_id``; the result is fetched with
``POST /api/v1/retrieve_future``, which long-polls and answers
``{"type": "try_again"}`` while the work goes on, as the official SDK's
``_APIFuture`` does it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import trio

from .. import _test_mode
from .._errors import APIStatusError, APITimeoutError, RequestFailedError
from ._http import MAX_QUOTED_BODY

if TYPE_CHECKING:
    from ._http import HTTPClient

__all__ = ["retrieve_future"]

_RETRIEVE_FUTURE: Final = "/api/v1/retrieve_future"
_CATEGORIES: Final = frozenset({"user", "server", "unknown"})
#: How long `retrieve_future` waits for a result in all, in seconds.
FUTURE_TIMEOUT: Final = 600.0
#: The pause after the first quick ``try_again``; it doubles up to the max.
_FIRST_PAUSE: Final = 0.1
#: The longest pause between two polls.
_MAX_PAUSE: Final = 1.0


async def retrieve_future(
    http: HTTPClient, request_id: str, *, request_type: str | None = None
) -> dict[str, Any]:
    """Wait for the result of an accepted request.

    Polls ``POST /api/v1/retrieve_future`` while the service answers
    ``{"type": "try_again"}`` (the server long-polls; a quick answer is
    followed by a short pause that doubles up to a second), for at most
    `FUTURE_TIMEOUT` seconds in all.

    Args:
        http: The client to poll with (each poll has its own retries).
        request_id: The ``request_id`` the service gave the request.
        request_type: Sent as ``X-Tinker-Request-Type``, as the SDK does
            (e.g. ``"LoadWeights"``).

    Returns:
        The result object.

    Raises:
        RequestFailedError: The request failed server-side (its
            ``category`` is the service's: ``user``, ``server`` or
            ``unknown``), or the service does not know it (HTTP 404 or
            410): it expired or was lost; submitting again may work.
        APITimeoutError: No result within the overall deadline.
        TinkerAPIError: A poll failed after its own retries.
        ResponseValidationError: A poll answer is not a JSON object.
    """
    allow_metadata_only = True
    pause = _FIRST_PAUSE
    iteration = 0
    with trio.move_on_after(FUTURE_TIMEOUT) as deadline:
        while True:
            headers = {"X-Tinker-Request-Iteration": str(iteration)}
            if request_type is not None:
                headers["X-Tinker-Request-Type"] = request_type
            started = trio.current_time()
            try:
                body = await http.request_object(
                    "POST",
                    _RETRIEVE_FUTURE,
                    json={
                        "request_id": request_id,
                        "allow_metadata_only": allow_metadata_only,
                    },
                    headers=headers,
                )
            except APIStatusError as exc:
                if exc.status in (404, 410):
                    raise RequestFailedError(
                        f"request {request_id!r} is no longer known to the service",
                        category="unknown",
                    ) from exc
                raise
            iteration += 1
            if body.get("type") == "try_again":
                await trio.sleep_until(started + _test_mode.limit_delay(pause))
                pause = min(pause * 2, _MAX_PAUSE)
                continue
            if body.get("status") == "complete_metadata" and allow_metadata_only:
                allow_metadata_only = False
                continue
            if "error" in body:
                category = body.get("category")
                if category not in _CATEGORIES:
                    category = "unknown"
                raise RequestFailedError(
                    http.redact(
                        f"request {request_id!r} failed ({category}): "
                        f"{str(body['error'])[:MAX_QUOTED_BODY]}"
                    ),
                    category=str(category),
                )
            return body
    assert deadline.cancelled_caught
    raise APITimeoutError(
        f"request {request_id!r} gave no result within {FUTURE_TIMEOUT:g} s"
    )
