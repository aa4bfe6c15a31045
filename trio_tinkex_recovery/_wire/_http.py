"""httpx plumbing under Trio: auth header, idempotency, retries, error mapping.

One `HTTPClient` (one per service client) spreads its connections over a
few small ``httpx.AsyncClient`` pools: httpcore's cost per request grows
with the size of a pool (benchmarks/README.md), not with the number of
pools.  Tasks queue for a connection on a Trio semaphore.

`HTTPClient.request` is the only way a request leaves this library.  It

- sends ``X-API-Key`` on every request and ``X-Idempotency-Key`` on every
  non-GET request: one key per logical operation, kept (with the very same
  body bytes) across that operation's HTTP retries, so a server that has
  already acted answers the retry with its first answer instead of acting
  twice;
- gives each attempt one Trio deadline, ``Config.timeout``, for all of it:
  connecting, sending, the headers and the whole body, so a server that
  trickles bytes or never ends its body times out like a silent one;
- reads at most ``Config.max_response_bytes`` of a body, then closes the
  connection (`ResponseTooLargeError`);
- retries 408, 409, 429, 5xx, timeouts and connection errors up to
  ``max_retries`` times, waiting ``min(0.5·2^n, 10)`` seconds less up to 25%
  jitter, or what ``retry-after-ms`` / ``Retry-After`` ask for (capped at
  60 s; a value that is negative, not a number or a past date is ignored),
  as the official SDK does (``tinker/_base_client.py``);
- translates every failure into the error tree (``raise ... from exc``);
- parses JSON strictly: a body that is not JSON is a
  `ResponseValidationError` naming the endpoint.

Waiting uses Trio's clock, so tests drive it with ``MockClock``.  Messages
never contain headers.  Every body is scrubbed of the API key (`redact`)
as soon as it is read, before it is parsed, quoted or shortened, so no
text built from it anywhere can show the key.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import json
import logging
import math
import random
import time
import uuid
from typing import TYPE_CHECKING, Any, Final, TypedDict, Unpack

import attrs
import httpx
import trio

from .. import _test_mode
from .._backoff import backoff_delay
from .._config import redact
from .._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ResponseTooLargeError,
    ResponseValidationError,
    TinkerAPIError,
    error_for_status,
)
from .._validators import fraction, positive, positive_int

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._config import Config

__all__ = [
    "HTTPClient",
    "HTTPSettings",
    "new_idempotency_key",
]

logger = logging.getLogger("trio_tinkex_recovery.http")

#: The longest piece of a response body quoted in an error message.
MAX_QUOTED_BODY: Final = 300

#: The most connections in one httpx pool (see `HTTPClient`).
_POOL_SIZE: Final = 10

#: How long closing a response may take (a shielded cleanup).
_CLOSE_TIMEOUT: Final = 5.0


def _package_version() -> str:
    try:
        return importlib.metadata.version("trio-tinkex-recovery")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source tree
        return "0+unknown"


USER_AGENT: Final = (
    f"trio-tinkex-recovery/{_package_version()} httpx/{httpx.__version__}"
)


def new_idempotency_key() -> str:
    """A fresh ``X-Idempotency-Key`` for one logical operation."""
    return f"trio-tinkex-{uuid.uuid4()}"


@attrs.frozen(kw_only=True)
class HTTPSettings:
    """Internal knobs of the HTTP layer; the defaults are the SDK's.

    Not public: users configure `Config` (``timeout``, ``max_retries``),
    and tests use `set_testing` for exact or short delays.
    """

    #: Connections kept to the service (in pools of at most ten); more
    #: tasks queue for one.  50 in flight: 1,000 requests/s at 50 ms each.
    max_connections: int = attrs.field(default=50, validator=positive_int)
    #: Delay before the first retry; it doubles with each retry.
    initial_retry_delay: float = attrs.field(default=0.5, validator=positive)
    #: The computed delay never exceeds this.
    max_retry_delay: float = attrs.field(default=10.0, validator=positive)
    #: A server's ``Retry-After`` is honoured up to this many seconds.
    max_retry_after: float = attrs.field(default=60.0, validator=positive)
    #: A computed delay is shortened by up to this fraction, at random.
    jitter: float = attrs.field(default=0.25, validator=fraction)

    def retry_delay(self, retries_taken: int, retry_after: float | None) -> float:
        """The wait before retry number ``retries_taken + 1``.

        What the server asked for (capped), else the backoff less up to
        ``jitter`` of it at random; `set_testing` may turn the jitter off
        and shorten the wait.
        """
        if retry_after is not None:
            delay = min(retry_after, self.max_retry_after)
        else:
            delay = backoff_delay(
                retries_taken,
                initial=self.initial_retry_delay,
                maximum=self.max_retry_delay,
            )
            if _test_mode.jitter_enabled():
                delay *= 1 - self.jitter * random.random()
        return _test_mode.limit_delay(delay)


def parse_retry_after(
    headers: httpx.Headers, *, now: float | None = None
) -> float | None:
    """The delay a response asks for, in seconds, or ``None`` if it asks none.

    ``retry-after-ms`` (milliseconds) wins over ``Retry-After`` (seconds, or
    an HTTP date, measured against the wall clock as the server's is).
    A value that is negative, not a number, NaN or infinite, or a date that
    is not in the future (or has no zone) asks nothing: the caller's
    backoff applies.
    """
    millis = _non_negative(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return delay if delay > 0 else None


def _non_negative(value: str | None) -> float | None:
    """``value`` as a finite number ≥ 0, or ``None``."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _loads(content: bytes) -> object:
    """Decode strict JSON: no ``NaN``/``Infinity``, no empty body."""
    return json.loads(content, parse_constant=_reject_constant)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _describe_body(content: bytes) -> str:
    """A short description of an (already redacted) error body, for a message."""
    try:
        body = _loads(content)
    except (ValueError, RecursionError):
        text = content[:MAX_QUOTED_BODY].decode("utf-8", "replace")
        return text.strip() or "(empty body)"
    if isinstance(body, dict):
        for field in ("detail", "error", "message"):
            if isinstance(body.get(field), str):
                return str(body[field])[:MAX_QUOTED_BODY]
    return json.dumps(body)[:MAX_QUOTED_BODY]


def _should_retry(response: httpx.Response) -> bool | None:
    """What ``x-should-retry`` says (as the SDK reads it), if anything."""
    return {"true": True, "false": False}.get(
        response.headers.get("x-should-retry", "")
    )


def expect_object(value: object, endpoint: str) -> dict[str, Any]:
    """``value`` if it is a JSON object.

    Raises:
        ResponseValidationError: It is not; the message names ``endpoint``.
    """
    if not isinstance(value, dict):
        raise ResponseValidationError(
            f"{endpoint}: expected a JSON object, got {type(value).__name__}"
        )
    return value


class RequestOptions(TypedDict, total=False):
    """The options of `HTTPClient.request` that `request_object` passes on."""

    json: object
    params: Mapping[str, str] | None
    idempotency_key: str | None
    headers: Mapping[str, str] | None
    max_retries: int | None


class HTTPClient:
    """Pools of ``httpx.AsyncClient`` and the retry policy around them.

    Owned by a service client; close it with `aclose`.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        settings: HTTPSettings | None = None,
    ) -> None:
        self.settings = settings or HTTPSettings()
        self.max_retries = config.max_retries
        self.timeout = config.timeout
        self.max_response_bytes = config.max_response_bytes
        self._key = config.api_key
        self.base_url = config.base_url
        total = self.settings.max_connections
        # httpcore scans every connection of a pool (polling each idle one)
        # on each request and response: pools of ten keep that cost flat
        # however many connections there are.  A given transport: one pool.
        sizes = (
            [total]
            if transport is not None
            else [min(_POOL_SIZE, total - n) for n in range(0, total, _POOL_SIZE)]
        )
        self._pools = [
            httpx.AsyncClient(
                base_url=config.base_url,
                headers={
                    "X-API-Key": config.api_key,
                    "User-Agent": USER_AGENT,
                    "Accept": "application/json",
                },
                timeout=httpx.Timeout(config.timeout),
                limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size
                ),
                transport=transport,
                # A redirect could carry the key elsewhere; the API never redirects.
                follow_redirects=False,
            )
            for size in sizes
        ]
        self._client = self._pools[0]
        self._free = list(sizes)
        # Tasks queue for a connection here, in Trio's FIFO, not in httpcore's
        # pool queue: httpcore rescans all its waiting requests on every
        # request and response, which cost ms per request with thousands of
        # polls waiting (benchmarks/README.md).
        self._slots = trio.Semaphore(total)

    def __repr__(self) -> str:
        return f"<HTTPClient base_url={self.base_url!r}>"

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` has run."""
        return self._client.is_closed

    async def aclose(self) -> None:
        """Close the connection pools."""
        for pool in self._pools:
            await pool.aclose()

    async def _send(
        self, method: str, path: str, *, time_limit: float, **options: Any
    ) -> tuple[httpx.Response, bytes]:
        """One attempt: send a request once a connection is free, read its answer.

        The request is built only then: one still waiting costs no CPU and
        holds no memory yet, which matters when thousands of polls are
        queued.  It goes on the first pool with a free connection.  From
        then on the attempt has ``time_limit`` seconds in all, body included.

        Returns:
            The (closed) response and its body, with the key masked.

        Raises:
            trio.TooSlowError: The answer was not complete in time.
            ResponseTooLargeError: The body is over ``max_response_bytes``.
            httpx.RequestError: The transport failed.
        """
        async with self._slots:
            request = self._client.build_request(
                method, path, timeout=time_limit, **options
            )
            index = next(i for i, free in enumerate(self._free) if free)
            self._free[index] -= 1
            try:
                with trio.fail_after(time_limit):
                    response = await self._pools[index].send(request, stream=True)
                    try:
                        content = await self._read(response, f"{method} {path}")
                    finally:
                        # Unread data is not drained: the connection is closed.
                        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                            await response.aclose()
            finally:
                self._free[index] += 1
        return response, self._redact_body(content)

    async def _read(self, response: httpx.Response, endpoint: str) -> bytes:
        """The body of ``response``, up to ``max_response_bytes``.

        Raises:
            ResponseTooLargeError: The body (as declared, or as read) is
                larger; nothing more of it is read.
        """
        limit = self.max_response_bytes

        def too_large() -> ResponseTooLargeError:
            return ResponseTooLargeError(
                f"{endpoint}: HTTP {response.status_code}: the answer is larger "
                f"than {limit} bytes (Config.max_response_bytes)",
                status=response.status_code,
                retryable=False,
            )

        declared = response.headers.get("content-length", "")
        if (
            declared.isascii()
            and declared.isdigit()
            and (len(declared) > 20 or int(declared) > limit)
        ):
            raise too_large()
        body = bytearray()
        over = False
        # Leaving the loop early would strand the async generators httpx and
        # httpcore stack under aiter_bytes.  A cancellation instead lands at
        # the stream's next read, deep down, and unwinds every one of them.
        with trio.CancelScope() as stop:
            async for chunk in response.aiter_bytes():
                if not over and len(body) + len(chunk) > limit:
                    over = True
                    stop.cancel()
                if not over:
                    body += chunk
        if over:
            raise too_large()
        return bytes(body)

    def redact(self, text: str) -> str:
        """``text`` with the API key masked, should a server have echoed it."""
        return redact(text, self._key)

    def _redact_body(self, content: bytes) -> bytes:
        secret = self._key.removeprefix("tml-").encode()
        if secret not in content and not (b"%" in content or b"\\u" in content):
            return content  # no spelling of the key can be in it
        # Latin-1 maps bytes to code points one to one, and the key and its
        # mask are ASCII: only the key's bytes change, whatever the encoding.
        return self.redact(content.decode("latin-1")).encode("latin-1")

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_retries: int | None = None,
        attempt_timeout: float | None = None,
        parse: bool = True,
    ) -> object:
        """Send one logical request, retrying transient failures.

        Args:
            method: The HTTP method.
            path: The path under the base URL, e.g. ``/api/v1/weights_info``.
            json: The body, encoded once: every retry sends the same bytes.
            params: Query parameters.
            idempotency_key: The key of this operation, for a non-GET request;
                a fresh one when ``None``.  Pass the same key again to repeat
                an operation the server may already have done.
            headers: Extra headers for this request.
            max_retries: Overrides ``Config.max_retries`` for this request.
            attempt_timeout: Overrides ``Config.timeout`` for each HTTP attempt.
            parse: Whether to decode the response body as JSON.

        Returns:
            The decoded JSON body (``None`` when ``parse`` is false).

        Raises:
            APIStatusError: An error status (a subclass per status), after
                the retries when it is retryable.
            APITimeoutError: No complete answer in time, after the retries.
            APIConnectionError: The connection failed, after the retries.
            ResponseTooLargeError: The answer is over ``max_response_bytes``.
            ResponseValidationError: A success answer that is not JSON.
            trio.ClosedResourceError: `aclose` has run.
        """
        if self._client.is_closed:
            raise trio.ClosedResourceError("the client is closed")
        # A transport need not checkpoint (an in-process ASGI app may not);
        # Trio's convention says every async call does, so we do here.
        await trio.lowlevel.checkpoint()
        endpoint = f"{method} {path}"
        retries = self.max_retries if max_retries is None else max_retries
        request_headers = dict(headers or {})
        content: bytes | None = None
        if json is not None:
            content = _dumps(json)
            request_headers["Content-Type"] = "application/json"
        if method.upper() != "GET":
            request_headers["X-Idempotency-Key"] = (
                idempotency_key or new_idempotency_key()
            )
        timeout = self.timeout if attempt_timeout is None else attempt_timeout
        retries_taken = 0
        while True:
            error: TinkerAPIError
            cause: BaseException
            retry_after: float | None = None
            try:
                response, body = await self._send(
                    method,
                    path,
                    content=content,
                    params=params,
                    headers=request_headers,
                    time_limit=timeout,
                )
            except trio.TooSlowError as exc:
                error = APITimeoutError(
                    f"{endpoint}: no complete answer within {timeout:g} s"
                )
                cause = exc
            except httpx.TimeoutException as exc:
                error = APITimeoutError(
                    f"{endpoint}: no answer in time ({type(exc).__name__})"
                )
                cause = exc
            except httpx.RequestError as exc:
                error = APIConnectionError(
                    self.redact(
                        f"{endpoint}: connection failed: {type(exc).__name__}: {exc}"
                    )
                )
                cause = exc
            else:
                if response.is_success:
                    if not parse:
                        return None
                    try:
                        return _loads(body)
                    except (ValueError, RecursionError) as exc:
                        raise ResponseValidationError(
                            f"{endpoint}: the response is not valid JSON: {exc}"
                        ) from exc
                error = self._status_error(endpoint, response, body)
                retry_after = parse_retry_after(response.headers)
                cause = httpx.HTTPStatusError(
                    f"HTTP {response.status_code}",
                    request=response.request,
                    response=response,
                )
            if not error.retryable or retries_taken >= retries:
                if retries_taken:
                    error.message = f"{error.message} (after {retries_taken} retries)"
                    error.args = (error.message,)
                raise error from cause
            delay = self.settings.retry_delay(retries_taken, retry_after)
            logger.debug(
                "%s failed (%s); retry %d of %d in %.3f s",
                endpoint,
                type(error).__name__,
                retries_taken + 1,
                retries,
                delay,
            )
            await trio.sleep(delay)
            retries_taken += 1

    def _status_error(
        self, endpoint: str, response: httpx.Response, body: bytes
    ) -> APIStatusError:
        status = response.status_code
        message = f"{endpoint}: HTTP {status}: {_describe_body(body)}"
        return error_for_status(status, message, retryable=_should_retry(response))

    async def request_object(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> dict[str, Any]:
        """`request` (with the same options), for an endpoint that answers a
        JSON object.

        Raises:
            ResponseValidationError: The answer is not a JSON object.
            TinkerAPIError: As `request`.
        """
        body = await self.request(method, path, **options)
        return expect_object(body, f"{method} {path}")
