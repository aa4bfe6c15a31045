"""The public test mode: exact or short waits, heartbeat on demand."""

from __future__ import annotations

import itertools

import httpx
import pytest
import trio

from trio_tinkex_recovery import (
    Config,
    InternalServerError,
    is_testing,
    open_service_client,
    set_testing,
)

KEY = "tml-TestModeKeyNeverShown"


def test_set_testing_is_a_statement_and_a_context_manager():
    """The mode holds after the call; leaving its block restores the old one."""
    assert not is_testing()
    with set_testing(True):
        assert is_testing()
        with set_testing(False):
            assert not is_testing()
        assert is_testing()
    assert not is_testing()
    set_testing(True)
    try:
        assert is_testing()
    finally:
        set_testing(False)
    assert not is_testing()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_delay": -1}, ValueError, "max_delay must be ≥ 0"),
        ({"max_delay": "1"}, TypeError, "max_delay must be a number"),
        ({"heartbeat_interval": 0}, ValueError, "heartbeat_interval must be > 0"),
        ({"heartbeat_interval": float("nan")}, ValueError, "heartbeat_interval"),
    ],
)
def test_bad_options_are_refused_and_change_nothing(options, error, match):
    """An invalid option raises, naming it, and leaves the mode as it was."""
    with pytest.raises(error, match=match):
        set_testing(True, **options)
    assert not is_testing()


async def retry_gaps(answer: httpx.Response, *, retries: int) -> list[float]:
    """The waits between the attempts of one failing GET of the native client."""
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return answer

    config = Config(api_key=KEY, base_url="https://tinker.test", max_retries=retries)
    async with open_service_client(
        config, transport=httpx.MockTransport(handler)
    ) as service:
        with pytest.raises(InternalServerError):
            await service.create_rest_client().get_training_run("run-1")
    return [b - a for a, b in itertools.pairwise(times)]


async def test_test_mode_makes_retry_delays_exact(autojump_clock):
    """In test mode the client's retry delays are the formula's, no jitter."""
    with set_testing(True):
        gaps = await retry_gaps(httpx.Response(503), retries=6)
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


async def test_max_delay_caps_backoff_and_retry_after(autojump_clock):
    """max_delay shortens every wait, a server's Retry-After included."""
    with set_testing(True, max_delay=0.02):
        backoff = await retry_gaps(httpx.Response(503), retries=3)
        asked = await retry_gaps(
            httpx.Response(503, headers={"Retry-After": "30"}), retries=2
        )
    assert backoff == pytest.approx([0.02, 0.02, 0.02])
    assert asked == pytest.approx([0.02, 0.02])
