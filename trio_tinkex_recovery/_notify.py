"""Notifications: tell a person when a recovery gives up or a run stalls.

`notify` builds a `Notifier`, a telemetry subscriber started in the
monitor's nursery::

    async with open_monitor(policy=policy, config=config) as monitor:
        async with trio.open_nursery() as nursery:
            notifier = await nursery.start(
                notify("https://example.com/hooks/tinker", secret=secret).run,
                monitor,
            )
            await monitor.monitor_run("run-1")

Each event it is told to send (``exhausted`` and ``stalled`` by default)
becomes one HTTP POST: a CloudEvents 1.0 event in structured JSON mode,
signed per the Standard Webhooks spec (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``).  A Slack incoming-webhook URL
(``hooks.slack.com``) gets Slack's ``{"text": ...}`` instead.

A notification never gets in the way of a poll or a recovery: events are
turned into messages as they arrive and offered to a bounded queue with
``send_nowait`` (a full queue drops the message and counts it); one task
per receiver delivers them, one at a time, each request under its own
deadline, retried with exponential backoff and jitter on 408, 429 (its
``Retry-After`` honoured up to 60 s), 5xx and network errors, under the
same ``webhook-id`` so a receiver can tell a retry from a new event.
Drops and failures are counted (`Notifier.statistics`, and the metrics)
and logged once per receiver.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import socket
import time
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import httpx
import trio

from ._config import is_loopback_host, redact
from ._engine._telemetry import DEFAULT_BUFFER, EVENT_NAMES, describe
from ._secrets import configured_key, mask
from ._text import printable
from ._util import NoPublicConstructor
from ._validators import check_number
from ._wire._http import USER_AGENT, HTTPSettings, parse_retry_after

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._engine._executor import Executor
    from ._engine._monitor import Monitor
    from ._engine._telemetry import TelemetryEvent
    from ._state import RecoveryState

__all__ = ["DEFAULT_EVENTS", "Notifier", "NotifierStatistics", "notify"]

logger = logging.getLogger("trio_tinkex_recovery.notify")

#: The events notified unless told otherwise.
DEFAULT_EVENTS: Final = ("exhausted", "stalled")
#: The CloudEvents ``type`` of an event is this prefix and its name.
TYPE_PREFIX: Final = "io.trio-tinkex-recovery."
#: Where Slack's incoming webhooks live.
SLACK_HOST: Final = "hooks.slack.com"
#: Retry delays: 1 s doubling to 60 s less up to 25% jitter, or what a
#: receiver's ``Retry-After`` asks for, up to 60 s.
_RETRY: Final = HTTPSettings(
    initial_retry_delay=1.0, max_retry_delay=60.0, max_retry_after=60.0
)
#: The longest text (an error, an id) a notification carries.
_MAX_TEXT: Final = 1000
#: How much of a receiver's answer is read, to quote it in a log line.
_MAX_ANSWER: Final = 200
#: The events of a recovery, whose record fills in what their metadata lacks.
_RECOVERY_EVENTS: Final = frozenset(
    {"started", "checkpoint_selected", "client_created", "completed", "failed",
     "exhausted", "interrupted"}
)  # fmt: skip
#: Answers worth another try.
_RETRY_STATUSES: Final = frozenset({408, 429})


@attrs.frozen
class NotifierStatistics:
    """Counters of one `Notifier` at one moment."""

    #: Notifications the receiver accepted (a 2xx answer).
    sent: int = 0
    #: Requests sent again after a failed one.
    retries: int = 0
    #: Notifications given up on: retries exhausted, or an answer not
    #: worth a retry (e.g. 400, 404).
    failed: int = 0
    #: Notifications dropped because the queue was full.
    dropped: int = 0
    #: Notifications waiting in the queue now.
    queued: int = 0


@attrs.frozen
class _Message:
    """One notification, ready to send as often as needed."""

    id: str
    name: str
    run_id: str
    body: bytes


class _Failure(Exception):
    """One request did not get a 2xx answer."""

    def __init__(
        self, text: str, *, retry: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(text)
        self.retry = retry
        self.retry_after = retry_after


@final
class Notifier(metaclass=NoPublicConstructor):
    """Sends a monitor's chosen events to one receiver.

    Made by `notify`; start `run` in the monitor's nursery.  Use it from
    the Trio thread.
    """

    _factory_hint = "use notify(url)"

    def __init__(
        self,
        *,
        url: httpx.URL,
        key: bytes | None,
        on: frozenset[str],
        source: str,
        timeout: float,
        max_retries: int,
        max_queue: int,
    ) -> None:
        self._url = url
        self._key = key
        self._on = on
        self._source = source
        self._timeout = timeout
        self._max_retries = max_retries
        self._max_queue = max_queue
        self._slack = url.host == SLACK_HOST
        # Tests hand in a transport (httpx.MockTransport); None: the network.
        self._transport: httpx.AsyncBaseTransport | None = None
        self._running = False
        self._queue: trio.MemoryReceiveChannel[_Message] | None = None
        self._sent = self._retries = self._failed = self._dropped = 0
        self._told_failure = self._told_drop = False
        # Set while stopping; the wait between two tries, to cut it short.
        self._stopping = False
        self._pause: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Notifier to {self.receiver} on {','.join(sorted(self._on))}>"

    @property
    def receiver(self) -> str:
        """The receiver, as shown: its origin, the rest of its URL elided.

        A webhook's path is often its secret (Slack's is), so it is never
        shown, logged or counted under.
        """
        return _shown(self._url)

    @property
    def events(self) -> frozenset[str]:
        """The names of the events sent."""
        return self._on

    def statistics(self) -> NotifierStatistics:
        """Counters of notifications sent, retried, failed, dropped and queued."""
        queue = self._queue
        return NotifierStatistics(
            sent=self._sent,
            retries=self._retries,
            failed=self._failed,
            dropped=self._dropped,
            queued=0 if queue is None else queue.statistics().current_buffer_used,
        )

    async def run(
        self,
        monitor: Monitor | Executor,
        *,
        task_status: trio.TaskStatus[Notifier] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send ``monitor``'s chosen events until cancelled.

        Start it with ``nursery.start`` (it returns this notifier once
        subscribed, so no later event is missed)::

            notifier = await nursery.start(notify(url).run, monitor)

        When cancelled, it stops reading events; the request in flight
        finishes, a wait to retry is cut short, and what is queued is sent,
        one last try each, within ``timeout`` seconds in all: an
        ``exhausted`` that ends a watch is still told.

        Args:
            monitor: The monitor (or executor) whose events are sent.
            task_status: Reports this notifier.

        Raises:
            RuntimeError: It is already running.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        send, receive = trio.open_memory_channel[_Message](self._max_queue)
        self._queue = receive
        self._stopping = False
        state = getattr(getattr(monitor, "executor", monitor), "recovery_state", None)
        client = httpx.AsyncClient(
            transport=self._transport, timeout=self._timeout, trust_env=False
        )
        # Delivery is shielded: when the reader stops, what is queued and in
        # flight still goes out, within `timeout` seconds in all.
        delivery = trio.CancelScope(shield=True)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver_all, client, receive, delivery)
                try:
                    async with monitor.subscribe(DEFAULT_BUFFER) as events:
                        task_status.started(self)
                        try:
                            async for event in events:
                                self._offer(send, event, state)
                        finally:
                            # Events already emitted but not read yet go too.
                            while True:
                                try:
                                    event = events.receive_nowait()
                                except (trio.WouldBlock, trio.EndOfChannel):
                                    break
                                self._offer(send, event, state)
                finally:
                    self._stopping = True
                    send.close()
                    delivery.deadline = trio.current_time() + self._timeout
                    if self._pause is not None:
                        self._pause.cancel()
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 1.0
                await client.aclose()
            self._queue = None
            self._running = False

    # -- taking events in: never blocks ------------------------------------------

    def _offer(
        self,
        send: trio.MemorySendChannel[_Message],
        event: TelemetryEvent,
        state: Any,
    ) -> None:
        if event.name not in self._on:
            return
        record: RecoveryState | None = None
        if callable(state) and event.name in _RECOVERY_EVENTS:
            record = state(event.run_id)
        message = self._message(event, record)
        try:
            send.send_nowait(message)
        except trio.WouldBlock:
            self._dropped += 1
            if not self._told_drop:
                self._told_drop = True
                logger.warning(
                    "notifications to %s: the queue of %d is full, %s of run %s "
                    "dropped; later drops are counted, not logged",
                    self.receiver,
                    self._max_queue,
                    message.name,
                    printable(message.run_id),
                )

    def _message(self, event: TelemetryEvent, record: RecoveryState | None) -> _Message:
        message_id = f"msg_{uuid.uuid4().hex}"
        data = self._data(event, record)
        if self._slack:
            document: dict[str, Any] = {"text": _slack_text(data)}
        else:
            # When it happened, on the wall clock (event.time is Trio's).
            when = time.time() - max(trio.current_time() - event.time, 0.0)
            document = {
                "specversion": "1.0",
                "type": f"{TYPE_PREFIX}{event.name}",
                "source": self._source,
                "id": message_id,
                "time": _rfc3339(when),
                "subject": data["run_id"],
                "datacontenttype": "application/json",
                "data": data,
            }
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        return _Message(id=message_id, name=event.name, run_id=event.run_id, body=body)

    def _data(
        self, event: TelemetryEvent, record: RecoveryState | None
    ) -> dict[str, Any]:
        """What happened, as JSON: the run, the attempt, the checkpoint, the error."""
        data: dict[str, Any] = {
            "event": event.name,
            "run_id": _clean(event.run_id),
            "attempt": None,
            "checkpoint": None,
            "error": None,
        }
        if record is not None:
            data.update(
                attempt=record.attempt or None,
                checkpoint=_clean(record.checkpoint) if record.checkpoint else None,
                error=_clean(record.error) if record.error else None,
            )
        for key, value in event.metadata.items():
            cleaned = _json_value(value)
            name = _clean(str(key))
            # The run's own metadata cannot pass for the event or the run.
            if cleaned is not _SKIP and name not in ("event", "run_id"):
                data[name] = cleaned
        measurements = {
            _clean(key): value
            for key, value in event.measurements.items()
            if math.isfinite(value)
        }
        if measurements:
            data["measurements"] = measurements
        return data

    # -- delivering: one task per receiver ---------------------------------------

    async def _deliver_all(
        self,
        client: httpx.AsyncClient,
        receive: trio.MemoryReceiveChannel[_Message],
        delivery: trio.CancelScope,
    ) -> None:
        """Deliver the queue in order until it is closed and empty, or stopped."""
        current: _Message | None = None
        with delivery:
            async for current in receive:
                await self._deliver(client, current)
                current = None
        # Out of time while stopping: the rest is given up on.
        left = [] if current is None else [current]
        while True:
            try:
                left.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        for message in left:
            self._give_up(message, 0, "no time left: the notifier was stopped")

    async def _deliver(self, client: httpx.AsyncClient, message: _Message) -> None:
        """Send ``message`` until accepted or given up on.

        Once the notifier is stopping, a failed try is the last one.
        """
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._post(client, message)
            except _Failure as failure:
                if not failure.retry or attempts > self._max_retries or self._stopping:
                    self._give_up(message, attempts, str(failure))
                    return
                self._retries += 1
                delay = _RETRY.retry_delay(attempts - 1, failure.retry_after)
                # Stopping cuts the wait short, for one last try.
                with trio.CancelScope() as self._pause:
                    await trio.sleep(delay)
                self._pause = None
            else:
                self._sent += 1
                return

    async def _post(self, client: httpx.AsyncClient, message: _Message) -> None:
        """One request under its own deadline.

        Raises:
            _Failure: No 2xx answer; says whether to retry, and when.
        """
        headers = {"user-agent": USER_AGENT}
        if self._slack:
            headers["content-type"] = "application/json"
        else:
            headers["content-type"] = "application/cloudevents+json; charset=utf-8"
            timestamp = str(math.floor(time.time()))
            headers["webhook-id"] = message.id
            headers["webhook-timestamp"] = timestamp
            if self._key is not None:
                headers["webhook-signature"] = sign(
                    self._key, message.id, timestamp, message.body
                )
        request = client.build_request(
            "POST", self._url, content=message.body, headers=headers
        )
        with trio.move_on_after(self._timeout) as scope:
            try:
                response = await client.send(request, stream=True)
                try:
                    answer = b""
                    if not response.is_success:
                        async for chunk in response.aiter_bytes():
                            answer += chunk
                            if len(answer) >= _MAX_ANSWER:
                                break
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                raise _Failure(_clean(describe(exc)), retry=True) from None
            except (httpx.HTTPError, httpx.StreamError) as exc:
                # E.g. an error answer whose body does not decode: a
                # notifier never crashes the watcher over a receiver.
                raise _Failure(_clean(describe(exc)), retry=False) from None
        if scope.cancelled_caught:
            raise _Failure(f"no answer within {self._timeout:g} s", retry=True)
        status = response.status_code
        if response.is_success:
            return
        text = f"HTTP {status}"
        quoted = _clean(answer[:_MAX_ANSWER].decode("utf-8", "replace"))
        if quoted.strip():
            text = f"{text}: {quoted.strip()}"
        raise _Failure(
            text,
            retry=status in _RETRY_STATUSES or status >= 500,
            retry_after=parse_retry_after(response.headers),
        )

    def _give_up(self, message: _Message, attempts: int, reason: str) -> None:
        self._failed += 1
        first = not self._told_failure
        self._told_failure = True
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "notification of %s of run %s to %s failed after %d attempt(s): %s%s",
            message.name,
            printable(message.run_id),
            self.receiver,
            attempts,
            reason,
            "; later failures are counted, not logged" if first else "",
        )


def notify(
    url: str,
    *,
    secret: str | None = None,
    on: Iterable[str] = DEFAULT_EVENTS,
    source: str | None = None,
    timeout: float = 10.0,
    max_retries: int = 5,
    max_queue: int = 100,
) -> Notifier:
    """A `Notifier` that POSTs the events named in ``on`` to ``url``.

    Start its `Notifier.run` in the monitor's nursery.  Each event is one
    POST of a CloudEvents 1.0 structured JSON document::

        {"specversion": "1.0", "type": "io.trio-tinkex-recovery.exhausted",
         "source": "/trio-tinkex-recovery/HOST", "id": "msg_…",
         "time": "2026-12-04T17:00:00.123Z", "subject": "run-1",
         "datacontenttype": "application/json",
         "data": {"event": "exhausted", "run_id": "run-1", "attempt": 3,
                  "checkpoint": "tinker://run-1/weights/ckpt-0002",
                  "error": "InternalServerError: …", …}}

    with the Standard Webhooks headers ``webhook-id`` (the event's ``id``,
    the same on every retry), ``webhook-timestamp`` (seconds since the
    epoch, at each try) and, with a ``secret``, ``webhook-signature``:
    ``v1,`` and the base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``
    keyed with the secret's bytes.  A URL on ``hooks.slack.com`` gets
    ``{"text": "…"}`` (Slack's incoming webhooks) instead.

    Texts that came from a server (errors, ids, paths) are stripped of
    control characters and escape sequences, and the API key (a `Config`'s
    in use, or ``TINKER_API_KEY``'s) is masked wherever it appears in them.

    Args:
        url: The receiver: https, or plain http to this machine only
            (``localhost``, ``127.0.0.0/8``, ``[::1]``).
        secret: ``whsec_`` followed by the base64 of the signing key (the
            Standard Webhooks form); ``None`` sends no signature.
        on: The names of the events to send (from `EVENT_NAMES`).
        source: The CloudEvents ``source``; by default
            ``/trio-tinkex-recovery/`` and this machine's name.
        timeout: Seconds one request may take, all of it.
        max_retries: Further tries of a notification after a failed one.
        max_queue: Notifications waiting to be sent before new ones are
            dropped (and counted).

    Returns:
        The notifier, not started.

    Raises:
        TypeError: An argument is of the wrong type.
        ValueError: The URL is not an https one (or http to loopback), the
            secret is malformed (the message never shows it), an event
            name is unknown, or a number is out of range.
    """
    parsed = _check_url(url)
    key = None if secret is None else secret_key(secret)
    check_number("notify: timeout", timeout, minimum=0, strict=True)
    check_number("notify: max_retries", max_retries, minimum=0, integer=True)
    check_number("notify: max_queue", max_queue, minimum=1, integer=True)
    if source is None:
        source = f"/trio-tinkex-recovery/{urllib.parse.quote(socket.gethostname())}"
    elif not isinstance(source, str) or not source:
        raise TypeError(f"notify: source must be a non-empty str, got {source!r}")
    return Notifier._create(
        url=parsed,
        key=key,
        on=event_names(on),
        source=source,
        timeout=float(timeout),
        max_retries=max_retries,
        max_queue=max_queue,
    )


def event_names(on: Iterable[str]) -> frozenset[str]:
    """The event names of ``on``, checked.

    Raises:
        TypeError: ``on`` is a single str, or holds something else.
        ValueError: It is empty, or names an unknown event.
    """
    if isinstance(on, str):
        raise TypeError(
            f"notify: on must be a sequence of event names, not a str: "
            f"write on=({on!r},)"
        )
    names = frozenset(on)
    if not names:
        raise ValueError("notify: on names no event")
    unknown = sorted(str(name) for name in names - set(EVENT_NAMES))
    if unknown:
        raise ValueError(
            f"notify: unknown event name(s) {', '.join(unknown)}; "
            f"known: {', '.join(EVENT_NAMES)}"
        )
    return names


def secret_key(secret: str) -> bytes:
    """The signing key of a Standard Webhooks secret (``whsec_`` + base64).

    Raises:
        TypeError: ``secret`` is not a str.
        ValueError: It is malformed; the message shows no part of it.
    """
    if not isinstance(secret, str):
        raise TypeError("notify: secret must be a str")
    prefix = "whsec_"
    if not secret.startswith(prefix):
        raise ValueError(
            f"notify: the secret must be {prefix!r} followed by base64 (the "
            "Standard Webhooks form), e.g. 'whsec_' + base64 of 32 random bytes"
        )
    text = secret[len(prefix) :]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"notify: the secret after {prefix!r} is not valid base64"
        ) from None
    if not key:
        raise ValueError(f"notify: the secret after {prefix!r} is empty")
    return key


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` of a message: ``v1,`` and the base64 HMAC."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def _check_url(url: object) -> httpx.URL:
    if not isinstance(url, str):
        raise TypeError(f"notify: url must be a str, got {url!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ValueError(f"notify: not a URL: {printable(url)[:80]!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"notify: {_shown(parsed)} is not an https URL with a host")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"notify: {_shown(parsed)} has a port outside 1-65535")
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ValueError(
            f"notify: {_shown(parsed)} is plain http to another machine; "
            "notifications go over https, or plain http to this machine only "
            "(localhost, 127.0.0.1, [::1])"
        )
    return parsed


def _shown(url: httpx.URL) -> str:
    """``url`` without its credentials, path or query (often its secret)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = "" if url.port is None else f":{url.port}"
    rest = "/…" if url.raw_path not in (b"", b"/") else ""
    return printable(f"{url.scheme}://{host}{port}{rest}")


def _clean(text: str) -> str:
    """Text from a server, fit for a notification: no key, no controls, short."""
    # Events are masked when emitted; a notifier of an executor of your
    # own, or a key only in the environment, is masked here too.
    text = mask(text)
    key = configured_key(None)
    if key is not None:
        text = redact(text, key)
    text = printable(text)
    return text if len(text) <= _MAX_TEXT else f"{text[: _MAX_TEXT - 1]}…"


_SKIP: Final = object()


def _json_value(value: object) -> object:
    """A metadata value as JSON, or `_SKIP` (objects such as clients)."""
    if isinstance(value, BaseException):
        return _clean(describe(value))
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return _SKIP


def _rfc3339(seconds: float) -> str:
    when = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_text(data: dict[str, Any]) -> str:
    """One line for a Slack channel."""
    name, run = data["event"], data["run_id"]
    attempt, error = data.get("attempt"), data.get("error")
    if name == "exhausted":
        text = f"recovery of run {run} EXHAUSTED after {attempt} attempt(s)"
    elif name == "completed":
        text = f"run {run} recovered from {data.get('checkpoint')}"
        if data.get("new_run_id"):
            text += f" as {data['new_run_id']}"
    elif name == "stalled":
        text = f"run {run} STALLED"
        if data.get("last_request_time"):
            text += f": no progress since {data['last_request_time']}"
    elif name == "resumed":
        text = f"run {run} moves again"
    else:
        text = f"run {run}: {name}"
    if error and name != "completed":
        text += f": {error}"
    return _slack_escape(f"trio-tinkex-recovery: {text}")
