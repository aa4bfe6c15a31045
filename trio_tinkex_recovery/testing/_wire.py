"""What passes between the simulator's ASGI app and its endpoints.

The app reads a `WireRequest`; an endpoint answers a `Reply`, or raises
`WireError` for an HTTP error.  `body_of`, `field` and `query_int` read a
request's JSON and query the way the service validates them (422 for a
missing or mistyped field).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "NO_BODY",
    "Reply",
    "WireError",
    "WireRequest",
    "body_of",
    "encode_json",
    "field",
    "query_int",
]


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
    #: The body's bytes (for bodies that are not JSON).
    body: bytes = b""


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
    #: The media type of the body.
    content_type: str = "application/json"

    def encode(self) -> bytes:
        """The body's bytes."""
        if self.raw is not None:
            return self.raw
        return encode_json(self.body)


def encode_json(value: Any) -> bytes:
    """``value`` as compact JSON bytes, as the service sends it."""
    return json.dumps(value, separators=(",", ":")).encode()


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


def body_of(request: WireRequest) -> dict[str, Any]:
    """The request's JSON object body.

    Raises:
        WireError: 400 when the body is not JSON, 422 when it is not an object.
    """
    if request.json_error is not None:
        raise WireError(400, request.json_error)
    if request.json is NO_BODY or not isinstance(request.json, dict):
        raise WireError(422, "the request body must be a JSON object")
    return request.json


def field(
    body: Mapping[str, Any], name: str, kind: type, *, required: bool = True
) -> Any:
    """A field of a JSON object, checked to be a ``kind`` (``None`` if absent).

    Raises:
        WireError: 422 when it is required and absent, or of another type.
    """
    value = body.get(name)
    if value is None:
        if required:
            raise WireError(422, f"field {name!r} is required")
        return None
    accepted = (float, int) if kind is float else kind  # a JSON number is a float
    if not isinstance(value, accepted) or (
        kind is not bool and isinstance(value, bool)
    ):
        raise WireError(
            422, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def query_int(request: WireRequest, name: str, default: int) -> int:
    """A non-negative integer query parameter, ``default`` when absent.

    Raises:
        WireError: 422 when it is not a non-negative integer.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise WireError(422, f"query parameter {name!r} must be an integer") from None
    if value < 0:
        raise WireError(422, f"query parameter {name!r} must be >= 0")
    return value
