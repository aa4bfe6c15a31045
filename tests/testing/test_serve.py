"""The simulator served on loopback by hypercorn: real sockets, real time."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from trio_tinkex_recovery import TrainingRun
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

KEY = "tml-serve-test-0123456789"


@pytest.fixture
async def client(fake_tinker_url):
    """An httpx client talking to the served simulator."""
    async with httpx.AsyncClient(
        base_url=fake_tinker_url, headers={"X-API-Key": KEY}
    ) as client:
        yield client


async def test_fixture_serves_on_a_real_port(fake_tinker, fake_tinker_url, client):
    """fake_tinker_url is 127.0.0.1 with the port actually bound."""
    url = httpx.URL(fake_tinker_url)
    assert (url.scheme, url.host) == ("http", "127.0.0.1")
    assert url.port not in (None, 0)
    fake_tinker.add_run("run-1")
    fake_tinker.corrupt("run-1")
    response = await client.get(
        "/api/v1/training_runs/run-1", params={"access_scope": "owned"}
    )
    assert response.http_version == "HTTP/1.1"
    assert TrainingRun.from_json(response.json()).corrupted is True
    (recorded,) = fake_tinker.requests
    assert recorded.headers["x-api-key"] == "***"
    assert recorded.query == {"access_scope": "owned"}


async def test_port_zero_picks_distinct_free_ports(nursery):
    """Two servers started with port 0 report two different bound ports."""
    first = await nursery.start(serve_fake_tinker, FakeTinker())
    second = await nursery.start(serve_fake_tinker, FakeTinker())
    assert httpx.URL(first).port != httpx.URL(second).port


async def test_dropped_connection_is_a_transport_error(fake_tinker, client):
    """A drop closes the connection without a response; the next request works."""
    fake_tinker.add_run("run-1")
    fake_tinker.script(Fault.drop(path="/api/v1/training_runs"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/api/v1/training_runs/run-1")
    response = await client.get("/api/v1/training_runs/run-1")
    assert response.status_code == 200


async def test_lost_response_then_idempotent_retry(fake_tinker, client):
    """Over a real connection, a retried key after a lost response acts once."""
    fake_tinker.add_run("run-1")
    session = await client.post("/api/v1/create_session", json={"tags": []})
    session_id = session.json()["session_id"]
    body = {
        "session_id": session_id,
        "model_seq_id": 0,
        "path": "tinker://run-1/weights/ckpt-0002",
        "optimizer": True,
    }
    headers = {"X-Idempotency-Key": "load-1"}
    fake_tinker.script(Fault.drop(after_action=True, path="/api/v1/load_weights"))
    with pytest.raises(httpx.TransportError):
        await client.post("/api/v1/load_weights", json=body, headers=headers)
    retried = await client.post("/api/v1/load_weights", json=body, headers=headers)
    assert retried.json()["model_id"] == f"{session_id}:train:0"
    assert fake_tinker.restores == {"run-1": 1}
    assert fake_tinker.idempotent_replays == 1


async def test_rate_limit_over_the_wire(fake_tinker, client):
    """A 429 fault arrives with its Retry-After header and a JSON body."""
    fake_tinker.script(Fault.rate_limit(1.5))
    response = await client.post("/api/v1/client/config", json={})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1.5"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]


async def test_long_polls_run_concurrently(nursery):
    """retrieve_future long-polls in real time without blocking other requests."""
    hold = 1.0
    fake = FakeTinker(future_try_again=1, long_poll=hold)
    fake.add_run("run-1")
    url = await nursery.start(serve_fake_tinker, fake)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}) as client:
        session_id = (await client.post("/api/v1/create_session", json={})).json()[
            "session_id"
        ]
        ids = []
        for seq in range(2):
            response = await client.post(
                "/api/v1/load_weights",
                json={
                    "session_id": session_id,
                    "model_seq_id": seq,
                    "path": "tinker://run-1/weights/ckpt-0001",
                    "optimizer": False,
                },
            )
            ids.append(response.json()["request_id"])
        answers = []

        async def poll(request_id):
            response = await client.post(
                "/api/v1/retrieve_future", json={"request_id": request_id}
            )
            answers.append(response.json()["type"])

        start = trio.current_time()
        async with trio.open_nursery() as polls:
            for request_id in ids:
                polls.start_soon(poll, request_id)
            polls.start_soon(client.get, "/api/v1/healthz")
        elapsed = trio.current_time() - start
    assert answers == ["try_again", "try_again"]
    # Proved from the simulator's records: all three requests arrived while
    # the first long poll was still held, so none waited for another.
    arrived = [
        r.time
        for r in fake.requests
        if r.path in ("/api/v1/retrieve_future", "/api/v1/healthz")
    ]
    assert len(arrived) == 3
    assert max(arrived) - min(arrived) < hold
    assert hold <= elapsed < 30 * hold  # a loose guard, for shared cores


async def test_keep_alive_beyond_hypercorns_default(fake_tinker, client):
    """One connection carries more than hypercorn's default 1,000 requests."""
    fake_tinker.add_run("run-1")
    for _ in range(1001):
        response = await client.get("/api/v1/healthz")
        assert "close" not in response.headers.get("connection", "")
    assert fake_tinker.request_count(path="/api/v1/healthz") == 1001


async def test_cancelling_stops_the_server():
    """Cancelling serve_fake_tinker closes the listening socket."""
    fake = FakeTinker()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_tinker, fake)
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}) as c:
            assert (await c.get("/api/v1/healthz")).status_code == 200
        nursery.cancel_scope.cancel()
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/api/v1/healthz")


async def test_shutdown_trigger_stops_gracefully():
    """serve_fake_tinker returns once its shutdown trigger returns."""
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                lambda task_status: serve_fake_tinker(
                    FakeTinker(), shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}) as c:
                assert (await c.get("/api/v1/healthz")).status_code == 200
            stop.set()
    # The nursery exited by itself: the server stopped.


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_loopback(nursery):
    """The simulator can be served on ::1."""
    fake = FakeTinker()
    url = await nursery.start(
        lambda task_status: serve_fake_tinker(fake, host="::1", task_status=task_status)
    )
    assert url.startswith("http://[::1]:")
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}) as client:
        assert (await client.get("/api/v1/healthz")).status_code == 200


async def test_busy_port_raises_oserror(nursery):
    """Binding a port already in use fails with OSError."""
    url = await nursery.start(serve_fake_tinker, FakeTinker())
    port = httpx.URL(url).port
    with pytest.raises(OSError):  # noqa: PT011 - the errno varies by platform
        await nursery.start(
            lambda task_status: serve_fake_tinker(
                FakeTinker(), port=port, task_status=task_status
            )
        )
