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
    RequestFailedError,
    ResponseValidationError,
    UnprocessableEntityError,
)
from trio_tinkex_recovery._http import HTTPClient, HTTPSettings, parse_retry_after

KEY = "tml-Sup3rSecretKeyThatMustNeverLeak"
BASE = "https://tinker.example/services/tinker-prod"
EXACT = HTTPSettings(jitter=0)

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
    settings: HTTPSettings = EXACT,
    base_url: str = BASE,
) -> AsyncIterator[HTTPClient]:
    config = Config(api_key=KEY, base_url=base_url, max_retries=max_retries)
    http = HTTPClient(
        config, transport=httpx.MockTransport(recorder), settings=settings
    )
    try:
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
    """The default jitter takes a random fraction (≤ 25%) off each delay."""
    draws = iter([0.0, 0.5, 0.999])
    settings = HTTPSettings(random=lambda: next(draws))
    recorder = Recorder(status(500))
    async with client(recorder, settings=settings) as http:
        with pytest.raises(InternalServerError):
            await http.request("GET", "/api/v1/x")
    assert recorder.gaps() == pytest.approx([0.5, 1.0 * 0.875, 2.0 * 0.75025])


@given(retries=st.integers(0, 10_000), draw=st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_bounds(retries, draw):
    """Any retry count gives a finite delay in [0.75·base, base], base ≤ 10."""
    settings = HTTPSettings(random=lambda: draw)
    base = min(0.5 * 2.0 ** min(retries, 64), 10.0)
    assert 0.75 * base <= settings.backoff(retries) <= base


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
        ({"Retry-After": "soon"}, 0.5),
    ],
)
async def test_retry_after_is_honoured_up_to_a_minute(autojump_clock, headers, wait):
    """Retry-After (seconds) and retry-after-ms set the delay, capped at 60 s."""
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
    """An HTTP date means its distance from now; a past date means no wait."""
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == 30
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=now) == 0
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
    assert "tml-****" in str(auth.value)
    assert_secret_free(auth.value)

    recorder = Recorder(httpx.ConnectError(f"cannot reach, key={KEY}"))
    async with client(recorder, max_retries=1) as http:
        with pytest.raises(APIConnectionError) as conn:
            await http.request("GET", "/api/v1/x")
    assert str(conn.value).count("tml-****") == 1
    assert KEY not in str(conn.value)
    assert KEY not in repr(conn.value)

    recorder = Recorder(ok({"error": KEY, "category": "user"}))
    async with client(recorder) as http:
        with pytest.raises(RequestFailedError) as failed:
            await http.retrieve_future("r")
    assert_secret_free(failed.value)


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


def future_bodies(recorder: Recorder) -> list[dict[str, object]]:
    return [json.loads(r.content) for r in recorder.requests]


async def test_retrieve_future_polls_try_again_until_a_result(autojump_clock):
    """try_again answers are polled again, quick ones after a doubling pause."""
    try_again = ok({"type": "try_again", "request_id": "r-1"})
    recorder = Recorder(try_again, try_again, try_again, ok({"path": "p"}))
    async with client(recorder) as http:
        result = await http.retrieve_future("r-1", request_type="LoadWeights")
    assert result == {"path": "p"}
    assert recorder.gaps() == pytest.approx([0.1, 0.2, 0.4])
    assert all(
        r.url.path.endswith("/api/v1/retrieve_future") for r in recorder.requests
    )
    assert future_bodies(recorder)[0] == {
        "request_id": "r-1",
        "allow_metadata_only": True,
    }
    assert [r.headers["X-Tinker-Request-Iteration"] for r in recorder.requests] == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert recorder.requests[0].headers["X-Tinker-Request-Type"] == "LoadWeights"
    assert len({r.headers["X-Idempotency-Key"] for r in recorder.requests}) == 4


async def test_retrieve_future_long_poll_is_not_paused(autojump_clock):
    """A server that held the poll for seconds is polled again at once."""
    recorder = Recorder(ok({"type": "try_again"}), ok({"done": True}))

    async def long_poll(request: httpx.Request) -> httpx.Response:
        await trio.sleep(5)
        return recorder(request)

    transport = httpx.MockTransport(long_poll)
    config = Config(api_key=KEY, base_url=BASE)
    http = HTTPClient(config, transport=transport, settings=EXACT)
    try:
        assert await http.retrieve_future("r") == {"done": True}
    finally:
        await http.aclose()
    assert recorder.times == [5.0, 10.0]


async def test_retrieve_future_metadata_only_answer_is_fetched_in_full():
    """A complete_metadata answer is re-polled with allow_metadata_only false."""
    recorder = Recorder(
        ok({"status": "complete_metadata", "response_payload_size": 10}),
        ok({"path": "p"}),
    )
    async with client(recorder) as http:
        assert await http.retrieve_future("r") == {"path": "p"}
    assert [b["allow_metadata_only"] for b in future_bodies(recorder)] == [True, False]


@pytest.mark.parametrize(
    ("category", "expected", "retryable"),
    [
        ("user", "user", False),
        ("server", "server", True),
        ("unknown", "unknown", True),
        ("weird", "unknown", True),
        (None, "unknown", True),
    ],
)
async def test_retrieve_future_failure_raises_request_failed(
    category, expected, retryable
):
    """A failure answer raises RequestFailedError with the service's category."""
    body: dict[str, object] = {"error": "checkpoint is corrupt"}
    if category is not None:
        body["category"] = category
    recorder = Recorder(ok(body))
    async with client(recorder) as http:
        with pytest.raises(RequestFailedError) as info:
            await http.retrieve_future("r-9")
    assert info.value.category == expected
    assert info.value.retryable is retryable
    assert "r-9" in str(info.value)
    assert "checkpoint is corrupt" in str(info.value)


async def test_retrieve_future_gives_up_at_the_deadline(autojump_clock):
    """Endless try_again ends with APITimeoutError after future_timeout."""
    recorder = Recorder(ok({"type": "try_again"}))
    settings = HTTPSettings(jitter=0, future_timeout=30)
    async with client(recorder, settings=settings) as http:
        with pytest.raises(APITimeoutError, match="within 30 s"):
            await http.retrieve_future("r")
    assert trio.current_time() == 30
    assert max(recorder.gaps()) == 1.0


@pytest.mark.parametrize("code", [404, 410])
async def test_retrieve_future_forgotten_request_is_a_retryable_failure(code):
    """404/410 on retrieve_future: the service lost the request; retry later."""
    recorder = Recorder(status(code))
    async with client(recorder) as http:
        with pytest.raises(RequestFailedError) as info:
            await http.retrieve_future("r")
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, APIStatusError)


async def test_retrieve_future_retries_transient_poll_failures(autojump_clock):
    """A 503 or dropped poll is retried with the usual backoff."""
    recorder = Recorder(status(503), httpx.ReadError("x"), ok({"path": "p"}))
    async with client(recorder) as http:
        assert await http.retrieve_future("r") == {"path": "p"}
    assert recorder.gaps() == [0.5, 1.0]
