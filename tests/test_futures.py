"""Tinker's futures protocol: polling retrieve_future until a result."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from trio_tinkex_recovery import (
    APIStatusError,
    APITimeoutError,
    Config,
    RequestFailedError,
)
from trio_tinkex_recovery._wire import HTTPClient
from trio_tinkex_recovery._wire._futures import retrieve_future

from .test_http import BASE, KEY, Recorder, assert_secret_free, client, ok, status


def future_bodies(recorder: Recorder) -> list[dict[str, object]]:
    return [json.loads(r.content) for r in recorder.requests]


async def test_retrieve_future_polls_try_again_until_a_result(autojump_clock):
    """try_again answers are polled again, quick ones after a doubling pause."""
    try_again = ok({"type": "try_again", "request_id": "r-1"})
    recorder = Recorder(try_again, try_again, try_again, ok({"path": "p"}))
    async with client(recorder) as http:
        result = await retrieve_future(http, "r-1", request_type="LoadWeights")
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
    http = HTTPClient(config, transport=transport)
    try:
        assert await retrieve_future(http, "r") == {"done": True}
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
        assert await retrieve_future(http, "r") == {"path": "p"}
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
            await retrieve_future(http, "r-9")
    assert info.value.category == expected
    assert info.value.retryable is retryable
    assert "r-9" in str(info.value)
    assert "checkpoint is corrupt" in str(info.value)


async def test_retrieve_future_gives_up_at_the_deadline(autojump_clock):
    """Endless try_again ends with APITimeoutError after ten minutes."""
    recorder = Recorder(ok({"type": "try_again"}))
    async with client(recorder) as http:
        with pytest.raises(APITimeoutError, match="within 600 s"):
            await retrieve_future(http, "r")
    assert trio.current_time() == 600
    assert max(recorder.gaps()) == 1.0


@pytest.mark.parametrize("code", [404, 410])
async def test_retrieve_future_forgotten_request_is_a_retryable_failure(code):
    """404/410 on retrieve_future: the service lost the request; retry later."""
    recorder = Recorder(status(code))
    async with client(recorder) as http:
        with pytest.raises(RequestFailedError) as info:
            await retrieve_future(http, "r")
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, APIStatusError)


async def test_retrieve_future_retries_transient_poll_failures(autojump_clock):
    """A 503 or dropped poll is retried with the usual backoff."""
    recorder = Recorder(status(503), httpx.ReadError("x"), ok({"path": "p"}))
    async with client(recorder) as http:
        assert await retrieve_future(http, "r") == {"path": "p"}
    assert recorder.gaps() == [0.5, 1.0]


async def test_failure_text_from_the_server_hides_the_key():
    """A failure answer echoing the API key raises without showing it."""
    recorder = Recorder(ok({"error": KEY, "category": "user"}))
    async with client(recorder) as http:
        with pytest.raises(RequestFailedError) as failed:
            await retrieve_future(http, "r")
    assert_secret_free(failed.value)
