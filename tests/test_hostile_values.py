"""Values a hostile server may put where the client expects others.

A ``corrupted`` that is not a JSON boolean is never read as a corruption,
and a run id from a page of the run list never reaches a URL unchecked.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from trio_tinkex_recovery import Config, ResponseValidationError, open_service_client
from trio_tinkex_recovery._engine._polling import read_listed

KEY = "tml-HostileValuesKey_0123456789"
BASE = "https://tinker.test"


def run_json(**fields: Any) -> dict[str, Any]:
    return {
        "training_run_id": "run-1",
        "base_model": "m",
        "model_owner": "o",
        "is_lora": True,
        "corrupted": False,
        "lora_rank": 8,
        "last_request_time": "2025-01-01T00:00:00Z",
        "last_checkpoint": None,
        "last_sampler_checkpoint": None,
        "user_metadata": None,
        **fields,
    }


def serving(body: Any, paths: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(200, content=json.dumps(body).encode())

    return httpx.MockTransport(answer)


NOT_BOOLEANS = ["true", "yes", 1, 0, None, [], {}, 1.0]


@pytest.mark.parametrize("value", NOT_BOOLEANS, ids=repr)
async def test_a_corrupted_that_is_not_a_boolean_is_rejected_by_get(value):
    """``GET`` of one run: a ResponseValidationError, never a corrupted run."""
    paths: list[str] = []
    transport = serving(run_json(corrupted=value), paths)
    async with open_service_client(
        Config(api_key=KEY, base_url=BASE, max_retries=0), transport=transport
    ) as service:
        with pytest.raises(ResponseValidationError, match="corrupted"):
            await service.create_rest_client().get_training_run("run-1")


@pytest.mark.parametrize("value", NOT_BOOLEANS, ids=repr)
async def test_a_corrupted_that_is_not_a_boolean_is_rejected_in_a_list(value):
    """A page of the list, read cheaply or in full: the same verdict."""
    with pytest.raises(ResponseValidationError, match="corrupted"):
        read_listed(run_json(corrupted=value))
    paths: list[str] = []
    page = {"training_runs": [run_json(corrupted=value)], "total_count": 1}
    async with open_service_client(
        Config(api_key=KEY, base_url=BASE, max_retries=0),
        transport=serving(page, paths),
    ) as service:
        with pytest.raises(ResponseValidationError):
            await service.create_rest_client().list_training_runs()


@pytest.mark.parametrize("bad", ["../admin", "a/b", "x?y=1", "a#b", "%2e%2e", ""])
async def test_run_ids_from_a_list_page_are_checked_before_any_url(bad):
    """A page naming a run ``../admin``: refused, and no request names it."""
    paths: list[str] = []
    page = {"training_runs": [run_json(training_run_id=bad)], "total_count": 1}
    async with open_service_client(
        Config(api_key=KEY, base_url=BASE, max_retries=0),
        transport=serving(page, paths),
    ) as service:
        rest = service.create_rest_client()
        with pytest.raises(ResponseValidationError):
            await rest.list_training_runs()
    assert paths == ["/api/v1/training_runs?limit=100&offset=0&access_scope=owned"]
