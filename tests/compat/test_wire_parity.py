"""Our native client and the official SDK send the same requests.

The same operations (read a run, list its checkpoints, restore with and
without optimizer, save a state) run once through the SDK and once through
`open_service_client`, each against a fresh simulator on loopback.  For every
endpoint both use, the method, path and JSON keys must match; every request
carries the API key header, every non-GET one an idempotency key.
"""

from __future__ import annotations

import os
import re

import pytest
import trio

from trio_tinkex_recovery import Config, open_service_client
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

if os.environ.get("TTR_REQUIRE_TINKER") == "1":
    import tinker
else:
    tinker = pytest.importorskip("tinker", reason="the tinker extra is not installed")

pytestmark = [
    # The SDK's own sockets outlive close(); that leak is the SDK's.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

KEY = "tml-parity-SECRET-00000000"
RUN = "run-1"
PATHS = [f"tinker://{RUN}/weights/ckpt-000{i}" for i in (1, 2)]
#: Endpoints only the SDK calls: its housekeeping, which we do not need.
SDK_ONLY = {
    "POST /api/v1/client/dynamic_config",
    "POST /api/v1/get_info",
    "POST /api/v1/session_heartbeat",
    "POST /api/v1/telemetry",
}
#: Optional keys the SDK sends that we leave out (the SDK sends detail: null).
SDK_OPTIONAL_KEYS = {"POST /api/v1/sessions/{id}/finish": {"detail"}}


def shape(fake: FakeTinker) -> dict[str, set[tuple[str, ...]]]:
    """Per endpoint (method + path with ids folded), the JSON key sets sent."""
    shapes: dict[str, set[tuple[str, ...]]] = {}
    for request in fake.requests:
        assert request.headers.get("x-api-key") == "***", request
        if request.method != "GET":
            assert request.idempotency_key, request
        path = re.sub(r"/training_runs/[^/]+", "/training_runs/{id}", request.path)
        path = re.sub(r"/sessions/[^/]+/", "/sessions/{id}/", path)
        keys = tuple(sorted(request.json)) if isinstance(request.json, dict) else ()
        shapes.setdefault(f"{request.method} {path}", set()).add(keys)
    return shapes


def new_fake() -> FakeTinker:
    fake = FakeTinker()
    fake.add_run(RUN, checkpoints=["ckpt-0001", "ckpt-0002"])
    return fake


async def with_sdk(url: str) -> None:
    def run() -> None:
        service = tinker.ServiceClient(base_url=url, api_key=KEY)
        rest = tinker.RestClient(base_url=url, api_key=KEY)
        rest.get_training_run(RUN).result()
        rest.list_checkpoints(RUN).result()
        # Our restore reads weights_info first (for base_model and lora_rank);
        # the SDK's restore does not, but its RestClient has the same call.
        rest.get_weights_info_by_tinker_path(PATHS[0]).result()
        service.create_training_client_from_state(PATHS[0]).result()
        client = service.create_training_client_from_state_with_optimizer(
            PATHS[1]
        ).result()
        client.save_state("saved").result()
        service.close("success").result()

    with trio.fail_after(60):
        await trio.to_thread.run_sync(run, abandon_on_cancel=True)


async def with_native(url: str) -> None:
    with trio.fail_after(60):
        async with open_service_client(Config(api_key=KEY, base_url=url)) as service:
            rest = service.create_rest_client()
            await rest.get_training_run(RUN)
            await rest.list_checkpoints(RUN)
            await service.create_training_client_from_state(PATHS[0])
            client = await service.create_training_client_from_state_with_optimizer(
                PATHS[1]
            )
            await client.save_state("saved")


async def test_native_requests_match_the_sdk(nursery, monkeypatch, tmp_path):
    """Same endpoints, same methods, same JSON keys as the official SDK."""
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("HOME", str(tmp_path))
    sdk_fake, native_fake = new_fake(), new_fake()
    await with_sdk(await nursery.start(serve_fake_tinker, sdk_fake))
    await with_native(await nursery.start(serve_fake_tinker, native_fake))

    sdk, native = shape(sdk_fake), shape(native_fake)
    assert set(native) <= set(sdk), set(native) - set(sdk)
    assert set(sdk) - set(native) <= SDK_ONLY
    for endpoint, key_sets in native.items():
        optional = SDK_OPTIONAL_KEYS.get(endpoint, set())
        expected = {
            tuple(k for k in keys if k not in optional) for keys in sdk[endpoint]
        }
        assert key_sets == expected, (endpoint, key_sets, sdk[endpoint])
    # Both did the same work on the service.
    assert [(r.tinker_path, r.optimizer) for r in native_fake.restore_log] == [
        (r.tinker_path, r.optimizer) for r in sdk_fake.restore_log
    ]
