"""The simulator's list endpoint: offset paging, order, scope and projects."""

from __future__ import annotations

import httpx
import pytest

from trio_tinkex_recovery import TrainingRun
from trio_tinkex_recovery.testing import FakeTinker

KEY = "tml-list-test-0123456789"


def client_of(fake):
    """An httpx client over ``fake``'s in-process transport, with an API key."""
    return httpx.AsyncClient(
        transport=fake.transport(), base_url="http://f", headers={"X-API-Key": KEY}
    )


async def page(client, **params):
    """One list page: (run ids, cursor)."""
    response = await client.get("/api/v1/training_runs", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    for run in body["training_runs"]:
        TrainingRun.from_json(run)  # every entry is a valid TrainingRun
    return [r["training_run_id"] for r in body["training_runs"]], body["cursor"]


async def restore(client, path, *, project_id=None):
    """Restore ``path`` in a new session; the new model's id."""
    created = await client.post(
        "/api/v1/create_session",
        json={"tags": [], "user_metadata": {}, "project_id": project_id},
    )
    body = {
        "session_id": created.json()["session_id"],
        "model_seq_id": 0,
        "path": path,
        "optimizer": True,
        "type": "load_weights",
    }
    return (await client.post("/api/v1/load_weights", json=body)).json()["model_id"]


async def test_recent_first_with_offset_paging(autojump_clock):
    """By default runs come newest first; offset pages carry the total count."""
    fake = FakeTinker()
    for i in range(5):
        fake.add_run(f"run-{i}")
    async with client_of(fake) as client:
        first = await page(client, limit=2, offset=0, access_scope="owned")
        second = await page(client, limit=2, offset=2, access_scope="owned")
        last = await page(client, limit=2, offset=4, access_scope="owned")
        beyond = await page(client, limit=2, offset=9, access_scope="owned")
    assert first == (["run-4", "run-3"], {"offset": 0, "limit": 2, "total_count": 5})
    assert second[0] == ["run-2", "run-1"]
    assert last[0] == ["run-0"]
    assert beyond == ([], {"offset": 9, "limit": 2, "total_count": 5})


async def test_recent_follows_activity(autojump_clock):
    """A run with a new checkpoint, or a restored model, moves to the front."""
    fake = FakeTinker()
    for i in range(3):
        fake.add_run(f"run-{i}")
    async with client_of(fake) as client:
        fake.add_checkpoint("run-0", "ckpt-0003")
        assert (await page(client))[0] == ["run-0", "run-2", "run-1"]
        model_id = await restore(client, "tinker://run-1/weights/ckpt-0002")
        ids, cursor = await page(client)
    assert ids == [model_id, "run-0", "run-2", "run-1"]
    assert model_id.endswith(":train:0")
    assert cursor["total_count"] == 4


async def test_order_by_id(autojump_clock):
    """list_order="id" sorts by run id whatever the activity."""
    fake = FakeTinker(list_order="id")
    for run_id in ["b", "c", "a"]:
        fake.add_run(run_id)
    fake.add_checkpoint("b", "late")
    async with client_of(fake) as client:
        assert (await page(client))[0] == ["a", "b", "c"]


async def test_shuffled_is_new_each_request_and_seeded(autojump_clock):
    """list_order="shuffled" draws a new order per request, from the seed."""

    async def orders(seed):
        fake = FakeTinker(list_order="shuffled", seed=seed)
        for i in range(8):
            fake.add_run(f"run-{i}")
        async with client_of(fake) as client:
            return [tuple((await page(client, limit=8))[0]) for _ in range(4)]

    first = await orders(3)
    assert all(sorted(ids) == [f"run-{i}" for i in range(8)] for ids in first)
    assert len(set(first)) > 1
    assert await orders(3) == first
    assert await orders(4) != first


async def test_limit_clamped_to_page_max(autojump_clock):
    """A limit above list_page_max is clamped, and the cursor says so."""
    fake = FakeTinker(list_page_max=3)
    for i in range(5):
        fake.add_run(f"run-{i}")
    async with client_of(fake) as client:
        ids, cursor = await page(client, limit=100)
        default_ids, _ = await page(client)  # the default limit is 20
    assert len(ids) == len(default_ids) == 3
    assert cursor == {"offset": 0, "limit": 3, "total_count": 5}


async def test_access_scope(autojump_clock):
    """owned lists the caller's runs (the default), accessible every run."""
    fake = FakeTinker(model_owner="me", list_order="id")
    fake.add_run("mine")
    fake.add_run("shared", model_owner="someone-else")
    async with client_of(fake) as client:
        assert (await page(client))[0] == ["mine"]
        assert (await page(client, access_scope="owned"))[0] == ["mine"]
        assert (await page(client, access_scope="accessible"))[0] == ["mine", "shared"]
        bad = await client.get(
            "/api/v1/training_runs", params={"access_scope": "everything"}
        )
    assert bad.status_code == 422


async def test_project_filter(autojump_clock):
    """project_id lists a project's runs; a restored model joins its session's."""
    fake = FakeTinker(list_order="id")
    fake.add_run("a", project_id="p1")
    fake.add_run("b", project_id="p2")
    fake.add_run("c")
    async with client_of(fake) as client:
        model_id = await restore(
            client, "tinker://b/weights/ckpt-0002", project_id="p1"
        )
        assert (await page(client, project_id="p1")) == (
            sorted(["a", model_id]),
            {"offset": 0, "limit": 20, "total_count": 2},
        )
        assert (await page(client, project_id="nope"))[0] == []
        assert len((await page(client))[0]) == 4


async def test_list_requests_counted_apart(autojump_clock):
    """list_requests counts list requests only, not GETs of single runs."""
    fake = FakeTinker()
    fake.add_run("run-1")
    async with client_of(fake) as client:
        await client.get("/api/v1/training_runs/run-1")
        await page(client)
        await page(client, offset=20)
        bad = await client.get("/api/v1/training_runs", params={"limit": "x"})
    assert bad.status_code == 422
    assert fake.list_requests == 3
    assert fake.requests_received == 4


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"list_order": "newest"}, ValueError),
        ({"list_page_max": 0}, ValueError),
        ({"list_page_max": 2.5}, TypeError),
        ({"list_page_max": True}, TypeError),
    ],
)
def test_list_options_checked(options, error):
    """Bad list options are refused when the simulator is built."""
    with pytest.raises(error, match="list_"):
        FakeTinker(**options)


def reference_order(fake, *, owned_only, project_id=None, order="recent"):
    """What a list shows, by filtering and sorting every run (the slow way)."""
    runs = [
        fake.find_run(run_id)
        for run_id in fake.run_ids
        if (not owned_only or fake.find_run(run_id).model_owner == fake.model_owner)
        and (project_id is None or fake.find_run(run_id).project_id == project_id)
    ]
    if order == "recent":
        runs.sort(key=lambda run: run.last_request_time, reverse=True)
    else:
        runs.sort(key=lambda run: run.run_id)
    return [run.run_id for run in runs]


async def all_pages(client, limit, **params):
    """Every page of a list, concatenated: (ids, corrupted flags)."""
    ids, flags, offset = [], [], 0
    while True:
        response = await client.get(
            "/api/v1/training_runs", params={"limit": limit, "offset": offset, **params}
        )
        rows = response.json()["training_runs"]
        ids += [row["training_run_id"] for row in rows]
        flags += [row["corrupted"] for row in rows]
        if len(rows) < limit:
            return ids, flags
        offset += limit


@pytest.mark.parametrize("order", ["recent", "id"])
async def test_pages_stay_in_order_as_runs_change(order, autojump_clock):
    """Pages follow adds, checkpoints, corruption, restores and filters.

    Each list is checked against filtering and sorting every run, after
    every change, so the list index never serves a stale order.
    """
    import random

    rng = random.Random(7)
    fake = FakeTinker(list_order=order, list_page_max=4)
    async with client_of(fake) as client:
        for step in range(60):
            action = rng.randrange(5)
            if action == 0 or not fake.run_ids:
                fake.add_run(
                    f"run-{step:03d}-{rng.randrange(100)}",
                    model_owner=rng.choice(["fake-user", "other"]),
                    project_id=rng.choice([None, "p1", "p2"]),
                    checkpoints=[],
                )
            elif action == 1:
                fake.add_checkpoint(rng.choice(fake.run_ids), f"ckpt-{step}")
            elif action == 2:
                fake.corrupt(rng.choice(fake.run_ids), rng.random() < 0.5)
            elif action == 3:
                source = rng.choice(fake.run_ids)
                if fake.checkpoints(source):
                    path = fake.checkpoints(source)[-1].tinker_path
                    await restore(client, path, project_id="p1")
            else:
                fake.model_owner = rng.choice(["fake-user", "other"])
            for scope, project_id in [
                ("owned", None),
                ("accessible", None),
                ("accessible", "p1"),
                ("owned", "p2"),
            ]:
                params = {"access_scope": scope}
                if project_id is not None:
                    params["project_id"] = project_id
                ids, flags = await all_pages(client, rng.choice([1, 3, 4]), **params)
                assert ids == reference_order(
                    fake,
                    owned_only=scope == "owned",
                    project_id=project_id,
                    order=order,
                )
                assert flags == [fake.run(run_id).corrupted for run_id in ids]


async def test_created_models_are_listed_first(autojump_clock):
    """A model made with create_model joins the list at once, newest first,
    and asking again with the same model_seq_id lists it once."""
    fake = FakeTinker()
    fake.add_run("run-a")
    async with client_of(fake) as client:
        assert (await page(client, access_scope="owned"))[0] == ["run-a"]
        created = await client.post(
            "/api/v1/create_session", json={"tags": [], "user_metadata": {}}
        )
        body = {
            "session_id": created.json()["session_id"],
            "model_seq_id": 0,
            "base_model": "Qwen/Qwen3-8B",
        }
        for _ in range(2):
            answer = await client.post("/api/v1/create_model", json=body)
            assert answer.status_code == 200, answer.text
        model_id = answer.json()["model_id"]
        ids, cursor = await page(client, access_scope="owned")
    assert ids == [model_id, "run-a"]
    assert cursor["total_count"] == 2
