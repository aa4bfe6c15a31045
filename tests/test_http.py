"""The HTTP layer: retries, delays, idempotency keys, error mapping, secrecy."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_tinkex_recovery import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Config,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLargeError,
    ResponseValidationError,
    UnprocessableEntityError,
    set_testing,
)
from trio_tinkex_recovery._backoff import backoff_delay
from trio_tinkex_recovery._wire._http import HTTPClient, parse_retry_after

KEY = "tml-Sup3rSecretKeyThatMustNeverLeak"
BASE = "https://tinker.example/services/tinker-prod"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler replaying scripted answers, recording requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(trio.current_time())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def ok(body: object = None) -> httpx.Response:
    return httpx.Response(200, json={} if body is None else body)


def status(code: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(code, json={"detail": f"status {code}"}, headers=headers)


@asynccontextmanager
async def client(
    recorder: Recorder,
    *,
    max_retries: int = 3,
    jitter: bool = False,
    base_url: str = BASE,
) -> AsyncIterator[HTTPClient]:
    """An HTTP client of ``recorder``, in test mode: exact delays unless ``jitter``."""
    config = Config(api_key=KEY, base_url=base_url, max_retries=max_retries)
    http = HTTPClient(config, transport=httpx.MockTransport(recorder))
    try:
        with set_testing(True, jitter=jitter):
            yield http
    finally:
        await http.aclose()


def assert_secret_free(exc: BaseException) -> None:
    """Neither the error nor anything it chains to shows the key."""
    seen: BaseException | None = exc
    while seen is not None:
        assert KEY not in str(seen)
        assert KEY not in repr(seen)
        assert all(KEY not in str(arg) for arg in seen.args)
        seen = seen.__cause__ or seen.__context__


async def test_request_sends_key_agent_and_query_under_base_path():
    """A GET carries the key and user agent, keeps the base path, has no key."""
    recorder = Recorder(ok({"training_run_id": "run-1"}))
    async with client(recorder) as http:
        body = await http.request(
            "GET", "/api/v1/training_runs/run-1", params={"access_scope": "owned"}
        )
    assert body == {"training_run_id": "run-1"}
    (request,) = recorder.requests
    assert request.method == "GET"
    assert request.url.path == "/services/tinker-prod/api/v1/training_runs/run-1"
    assert request.url.params["access_scope"] == "owned"
    assert request.headers["X-API-Key"] == KEY
    assert request.headers["User-Agent"].startswith("trio-tinkex-recovery/")
    assert request.headers["Accept"] == "application/json"
    assert "X-Idempotency-Key" not in request.headers


async def test_post_sends_json_body_and_an_idempotency_key():
    """A POST sends its JSON body with a content type and an idempotency key."""
    recorder = Recorder(ok({"base_model": "m"}))
    async with client(recorder) as http:
        await http.request("POST", "/api/v1/weights_info", json={"tinker_path": "p"})
    (request,) = recorder.requests
    assert json.loads(request.content) == {"tinker_path": "p"}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Idempotency-Key"]


async def test_retry_delays_double_from_half_a_second_without_jitter(autojump_clock):
    """With jitter off, retry n waits exactly min(0.5·2^n, 10) seconds."""
    recorder = Recorder(status(503))
    async with client(recorder, max_retries=7) as http:
        with pytest.raises(InternalServerError) as info:
            await http.request("GET", "/api/v1/x")
    assert recorder.gaps() == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert len(recorder.requests) == 8
    assert info.value.status == 503
    assert info.value.retryable is True
    assert "after 7 retries" in str(info.value)


async def test_jitter_shortens_delays_by_up_to_a_quarter(autojump_clock):
    """With jitter, each delay loses a random fraction (≤ 25%) of itself."""
    recorder = Recorder(status(500))
    async with client(recorder, max_retries=20, jitter=True) as http:
        with pytest.raises(InternalServerError):
            await http.request("GET", "/api/v1/x")
    nominal = [min(0.5 * 2**n, 10) for n in range(20)]
    gaps = recorder.gaps()
    assert all(0.75 * d <= gap <= d for gap, d in zip(gaps, nominal, strict=True))
    assert len({gap / d for gap, d in zip(gaps, nominal, strict=True)}) > 1


@given(
    retries=st.integers(-10, 10**6),
    initial=st.floats(1e-3, 1e3),
    factor=st.floats(1, 1e6),
)
def test_backoff_doubles_up_to_its_cap_for_any_count(retries, initial, factor):
    """Any retry count gives min(initial·2^n, maximum), finite, never above it."""
    maximum = initial * factor
    delay = backoff_delay(retries, initial=initial, maximum=maximum)
    assert initial <= delay <= maximum
    if 0 <= retries < 30:
        assert delay == min(initial * 2.0**retries, maximum)


async def test_success_after_transient_failures_returns_the_answer(autojump_clock):
    """Transient failures then a success: the caller only sees the success."""
    recorder = Recorder(
        status(429), httpx.ConnectError("refused"), status(502), ok({"a": 1})
    )
    async with client(recorder) as http:
        assert await http.request("GET", "/api/v1/x") == {"a": 1}
    assert len(recorder.requests) == 4
    assert trio.current_time() == 0.5 + 1.0 + 2.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "30"}, 0.25),
        ({"Retry-After": "3600"}, 60.0),
        ({"retry-after-ms": "120000"}, 60.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "1e308"}, 60.0),
        ({"Retry-After": "soon"}, 0.5),
        ({"Retry-After": "-5"}, 0.5),
        ({"Retry-After": "-1e308"}, 0.5),
        ({"Retry-After": "nan"}, 0.5),
        ({"Retry-After": "inf"}, 0.5),
        ({"Retry-After": "1e400"}, 0.5),
        ({"retry-after-ms": "-1000"}, 0.5),
        ({"retry-after-ms": "-1000", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "NaN", "Retry-After": "-3"}, 0.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00"}, 0.5),
    ],
)
async def test_retry_after_is_honoured_up_to_a_minute(autojump_clock, headers, wait):
    """Retry-After (seconds, a date) and retry-after-ms set the delay, capped at
    60 s; negative, non-numeric, infinite or past values leave the backoff."""
    recorder = Recorder(status(429, headers), ok())
    async with client(recorder) as http:
        await http.request("GET", "/api/v1/x")
    assert recorder.gaps() == [wait]


async def test_retry_after_http_date_far_ahead_is_capped(autojump_clock):
    """A Retry-After date an hour ahead waits the 60 s cap."""
    later = email.utils.format_datetime(
        dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), usegmt=True
    )
    recorder = Recorder(status(503, {"Retry-After": later}), ok())
    async with client(recorder) as http:
        await http.request("GET", "/api/v1/x")
    assert recorder.gaps() == [60.0]


def test_parse_retry_after_reads_http_dates_against_the_wall_clock():
    """An HTTP date means its distance from now; a past one asks for nothing."""
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == 30
    for past in (now - 30, now):
        date = email.utils.formatdate(past, usegmt=True)
        assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) is None
    assert parse_retry_after(httpx.Headers({}), now=now) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "nan"}), now=now) is None


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (408, APIStatusError),
        (409, ConflictError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
    ],
)
async def test_retryable_statuses_are_retried(autojump_clock, code, kind):
    """408, 409, 429 and 5xx are retried, then raised as retryable."""
    recorder = Recorder(status(code))
    async with client(recorder, max_retries=2) as http:
        with pytest.raises(kind) as info:
            await http.request("POST", "/api/v1/x", json={})
    assert len(recorder.requests) == 3
    assert info.value.status == code
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, APIStatusError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (410, APIStatusError),
        (422, UnprocessableEntityError),
        (302, APIStatusError),
    ],
)
async def test_other_statuses_fail_at_once(autojump_clock, code, kind):
    """Other 4xx (and unexpected redirects) are raised at once, not retryable."""
    recorder = Recorder(status(code))
    async with client(recorder) as http:
        with pytest.raises(kind) as info:
            await http.request("POST", "/api/v1/x", json={})
    assert type(info.value) is kind
    assert len(recorder.requests) == 1
    assert trio.current_time() == 0
    assert info.value.status == code
    assert info.value.retryable is False
    assert f"POST /api/v1/x: HTTP {code}: status {code}" in str(info.value)


async def test_x_should_retry_header_overrides_the_status(autojump_clock):
    """``x-should-retry`` decides, as in the SDK: false stops, true retries."""
    recorder = Recorder(status(503, {"x-should-retry": "false"}))
    async with client(recorder) as http:
        with pytest.raises(InternalServerError) as info:
            await http.request("GET", "/api/v1/x")
    assert len(recorder.requests) == 1
    assert info.value.retryable is False

    recorder = Recorder(status(400, {"x-should-retry": "true"}), ok())
    async with client(recorder) as http:
        await http.request("GET", "/api/v1/x")
    assert len(recorder.requests) == 2


async def test_timeouts_and_connection_errors_map_and_retry(autojump_clock):
    """Timeouts become APITimeoutError, other transport errors APIConnectionError."""
    recorder = Recorder(httpx.ReadTimeout("slow"))
    async with client(recorder, max_retries=1) as http:
        with pytest.raises(APITimeoutError) as timeout:
            await http.request("POST", "/api/v1/x", json={})
    assert len(recorder.requests) == 2
    assert timeout.value.retryable is True
    assert timeout.value.status is None
    assert isinstance(timeout.value.__cause__, httpx.ReadTimeout)

    recorder = Recorder(httpx.RemoteProtocolError("dropped"))
    async with client(recorder, max_retries=0) as http:
        with pytest.raises(APIConnectionError) as dropped:
            await http.request("GET", "/api/v1/x")
    assert type(dropped.value) is APIConnectionError
    assert len(recorder.requests) == 1
    assert isinstance(dropped.value.__cause__, httpx.RemoteProtocolError)


async def test_idempotency_key_and_body_stay_the_same_across_retries(autojump_clock):
    """One operation: the same key and the same bytes on every HTTP retry."""
    recorder = Recorder(
        httpx.ReadTimeout("lost"), status(500), httpx.ConnectError("x"), ok()
    )
    async with client(recorder) as http:
        await http.request(
            "POST", "/api/v1/load_weights", json={"session_id": "s", "model_seq_id": 3}
        )
    keys = {r.headers["X-Idempotency-Key"] for r in recorder.requests}
    bodies = {r.content for r in recorder.requests}
    assert len(recorder.requests) == 4
    assert len(keys) == 1
    assert bodies == {b'{"session_id":"s","model_seq_id":3}'}


async def test_idempotency_keys_differ_across_operations_unless_given():
    """Each operation gets a fresh key; a key passed in is used as it is."""
    recorder = Recorder(ok())
    async with client(recorder) as http:
        await http.request("POST", "/api/v1/x", json={})
        await http.request("POST", "/api/v1/x", json={})
        await http.request("POST", "/api/v1/x", json={}, idempotency_key="op-1")
        await http.request("POST", "/api/v1/x", json={}, idempotency_key="op-1")
    keys = [r.headers["X-Idempotency-Key"] for r in recorder.requests]
    assert keys[0] != keys[1]
    assert keys[2:] == ["op-1", "op-1"]
    assert "op-1" not in keys[:2]


@pytest.mark.parametrize("content", [b"", b"{not json", b"[NaN]", b"\xff\xfe"])
async def test_invalid_json_is_a_validation_error_naming_the_endpoint(content):
    """A success answer that is not strict JSON is rejected, not retried."""
    recorder = Recorder(httpx.Response(200, content=content))
    async with client(recorder) as http:
        with pytest.raises(ResponseValidationError) as info:
            await http.request("GET", "/api/v1/training_runs/run-1")
    assert "GET /api/v1/training_runs/run-1" in str(info.value)
    assert len(recorder.requests) == 1


async def test_request_object_rejects_other_json():
    """An endpoint that must answer an object refuses a list."""
    recorder = Recorder(ok([1, 2]))
    async with client(recorder) as http:
        with pytest.raises(ResponseValidationError, match="POST /api/v1/x"):
            await http.request_object("POST", "/api/v1/x", json={})


async def test_api_key_never_appears_in_errors(autojump_clock):
    """Errors built from echoing servers and failing transports hide the key."""
    echo = httpx.Response(401, json={"detail": f"bad key {KEY}"})
    recorder = Recorder(echo)
    async with client(recorder) as http:
        assert KEY not in repr(http)
        with pytest.raises(AuthenticationError) as auth:
            await http.request("GET", "/api/v1/x")
    assert "bad key ****" in str(auth.value)
    assert_secret_free(auth.value)

    recorder = Recorder(httpx.ConnectError(f"cannot reach, key={KEY}"))
    async with client(recorder, max_retries=1) as http:
        with pytest.raises(APIConnectionError) as conn:
            await http.request("GET", "/api/v1/x")
    assert str(conn.value).count("key=****") == 1
    assert KEY not in str(conn.value)
    assert KEY not in repr(conn.value)


async def test_cancelling_during_backoff_stops_at_once(autojump_clock):
    """A caller's deadline cancels the retry loop in its backoff sleep."""
    recorder = Recorder(status(503))
    async with client(recorder, max_retries=10) as http:
        with trio.move_on_after(2.0) as scope:
            await http.request("GET", "/api/v1/x")
    assert scope.cancelled_caught
    assert recorder.times == [0.0, 0.5, 1.5]
    assert trio.current_time() == 2.0


async def test_closed_client_refuses_requests():
    """After aclose a request raises ClosedResourceError, sending nothing."""
    recorder = Recorder(ok())
    async with client(recorder) as http:
        await http.aclose()
        assert http.is_closed
        with pytest.raises(trio.ClosedResourceError):
            await http.request("GET", "/api/v1/x")
    assert recorder.requests == []


def endless(chunk: bytes, *, pause: float, sent: list[int]):
    """A response body that never ends: ``chunk`` every ``pause`` seconds."""

    async def body():
        while True:
            await trio.sleep(pause)
            sent.append(len(chunk))
            yield chunk

    return body()


@pytest.mark.parametrize("pause", [1.0, 0.001])
async def test_a_body_that_never_ends_times_out_at_the_deadline(autojump_clock, pause):
    """Config.timeout bounds the whole answer: an endless body (a byte a
    second, or a byte a millisecond) is a timeout, retried as one."""
    recorder = Recorder(
        lambda request: httpx.Response(200, content=endless(b"x", pause=pause, sent=[]))
    )
    config = Config(api_key=KEY, base_url=BASE, timeout=5, max_retries=1)
    http = HTTPClient(config, transport=httpx.MockTransport(recorder))
    try:
        with set_testing(True), pytest.raises(APITimeoutError) as info:
            await http.request("GET", "/api/v1/x")
    finally:
        await http.aclose()
    assert recorder.times == [0.0, 5.5]
    assert trio.current_time() == 10.5
    assert "GET /api/v1/x: no complete answer within 5 s" in str(info.value)
    assert info.value.retryable is True


async def test_heartbeat_deadline_overrides_the_timeout(autojump_clock):
    """attempt_timeout sets the deadline of each attempt instead."""
    recorder = Recorder(
        lambda request: httpx.Response(200, content=endless(b"x", pause=1, sent=[]))
    )
    async with client(recorder, max_retries=0) as http:
        with pytest.raises(APITimeoutError):
            await http.request("POST", "/api/v1/x", json={}, attempt_timeout=2)
    assert trio.current_time() == 2


LIMIT = 1000


@asynccontextmanager
async def capped(recorder: Recorder) -> AsyncIterator[HTTPClient]:
    config = Config(api_key=KEY, base_url=BASE, max_response_bytes=LIMIT)
    http = HTTPClient(config, transport=httpx.MockTransport(recorder))
    try:
        with set_testing(True):
            yield http
    finally:
        await http.aclose()


@pytest.mark.parametrize("status", [200, 503])
async def test_an_oversized_body_fails_at_once_and_is_not_read(status):
    """Past max_response_bytes the request fails, unretried, reading no more."""
    sent: list[int] = []
    recorder = Recorder(
        lambda request: httpx.Response(
            status, content=endless(b"y" * 300, pause=0, sent=sent)
        )
    )
    async with capped(recorder) as http:
        with pytest.raises(ResponseTooLargeError) as info:
            await http.request("GET", "/api/v1/x")
    assert len(recorder.requests) == 1
    assert sum(sent) == 1200  # the chunk that crossed the limit, and no more
    assert info.value.retryable is False
    assert info.value.status == status
    assert "larger than 1000 bytes (Config.max_response_bytes)" in str(info.value)


@pytest.mark.parametrize("declared", [str(LIMIT + 1), "9" * 5000])
async def test_a_declared_oversized_body_is_refused_unread(declared):
    """A Content-Length over the limit fails before a byte of the body is read."""
    sent: list[int] = []
    recorder = Recorder(
        lambda request: httpx.Response(
            200,
            headers={"Content-Length": declared},
            content=endless(b"z", pause=0, sent=sent),
        )
    )
    async with capped(recorder) as http:
        with pytest.raises(ResponseTooLargeError):
            await http.request("GET", "/api/v1/x")
    assert sent == []


async def test_a_body_of_exactly_the_limit_is_read():
    """max_response_bytes itself is allowed."""
    recorder = Recorder(ok({"pad": "p" * (LIMIT - len('{"pad":""}'))}))
    async with capped(recorder) as http:
        body = await http.request("GET", "/api/v1/x")
    assert isinstance(body, dict)
    assert len(body["pad"]) == LIMIT - 10


def url_encoded(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


@pytest.mark.parametrize(
    "body",
    [
        # Padding puts the key across the 300 characters an error quotes.
        "x" * 280 + KEY,
        json.dumps({"detail": "p" * 290 + f"bad key {KEY}"}),
        '{"detail": "bad key ' + json_escaped(KEY) + '"}',
        "no route /api/v1/" + url_encoded(KEY) + "/runs",
        '{"detail": "no route /' + url_encoded(KEY[:10]) + KEY[10:] + '"}',
    ],
    ids=["padded-raw", "padded-json", "json-escaped", "url-encoded", "half-encoded"],
)
async def test_echoed_keys_are_masked_before_a_message_is_cut(body):
    """However the server spells the key back, no piece of it reaches the error."""
    recorder = Recorder(httpx.Response(401, content=body.encode()))
    async with client(recorder) as http:
        with pytest.raises(AuthenticationError) as info:
            await http.request("GET", "/api/v1/x")
    assert_no_piece_of_key(str(info.value))
    assert_no_piece_of_key(repr(info.value))


def assert_no_piece_of_key(text: str) -> None:
    """No 8 characters of KEY's secret part in a row, raw or URL-encoded."""
    secret = KEY.removeprefix("tml-")
    for start in range(len(secret) - 7):
        window = secret[start : start + 8]
        assert window not in text
        assert url_encoded(window) not in text


async def test_a_key_inside_a_success_answer_never_reaches_the_caller():
    """A key echoed in data is masked before parsing: values and errors are clean."""
    raw = f'{{"note": "hello {KEY}", "again": "{json_escaped(KEY)}", "k": "v"}}'
    recorder = Recorder(httpx.Response(200, content=raw.encode()))
    async with client(recorder) as http:
        body = await http.request("GET", "/api/v1/x")
    assert body == {"note": "hello ****", "again": "****", "k": "v"}
