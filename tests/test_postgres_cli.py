"""Replicas as a user runs them: ``watch --state postgresql://...`` processes.

Each test runs the CLI in subprocesses against the simulator on loopback,
sharing one fresh database of the session's PostgreSQL.  The chaos test
SIGKILLs replicas at random and judges by the simulator's own counts.
"""

from __future__ import annotations

import json
import random
import signal

import pytest
import trio

from trio_tinkex_recovery._store import StoredRun, open_store
from trio_tinkex_recovery.cli import _watch as watch
from trio_tinkex_recovery.cli._runtime import UsageError
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

from .test_cli import KEY, cli, environ, spawn

LEASE = 2.0


async def run_cli(*args: str) -> tuple[int, str, str]:
    async with spawn(cli(*args), environ(TINKER_API_KEY=KEY)) as command:
        code = await command.wait()
    return code, command.out.text, command.err.text


def replica_argv(url: str, dsn: str, *run_ids: str) -> list[str]:
    """A replica with no time limit of its own: the test ends it (SIGINT,
    SIGKILL, or the kill of `spawn` on the way out), never a clock."""
    return cli(
        "watch", *run_ids, "--base-url", url, "--poll-interval", "0.2",
        "--backoff", "0.1", "--json", "--state", dsn, "--lease", str(LEASE),
    )  # fmt: skip


async def until(condition, seconds: float) -> None:
    """Return once ``condition()`` holds (the simulator's state, checked often)."""
    with trio.fail_after(seconds):
        while True:
            if condition():
                return
            await trio.sleep(0.1)


def polls(fake: FakeTinker, run_id: str) -> list[float]:
    path = f"/api/v1/training_runs/{run_id}"
    return [r.time for r in fake.requests if r.method == "GET" and r.path == path]


async def test_two_replicas_share_the_runs_and_restore_once(postgres_dsn):
    """Two watch processes on one database: the runs are split between them, a
    corrupted run is restored exactly once, status shows each run's owner, and
    unwatch removes a run."""
    runs = [f"run-{i}" for i in range(4)]
    fake = FakeTinker(api_key=KEY)
    for run_id in runs:
        fake.add_run(run_id, checkpoints=["ckpt-0001"])
    env = environ(TINKER_API_KEY=KEY)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            async with (
                spawn(replica_argv(url, postgres_dsn, *runs), env) as a,
                spawn(replica_argv(url, postgres_dsn), env) as b,
            ):
                await a.out.wait_for(r'"name": "polled"')
                await b.out.wait_for(r'"name": "polled"')  # it got some runs
                fake.corrupt("run-0")
                await until(lambda: fake.restore_log, 60)
                (restore,) = fake.restore_log
                await until(lambda: polls(fake, restore.model_id), 60)
                code, out, err = await run_cli(
                    "status", "--state", postgres_dsn, "--json"
                )
                assert code == 0, err
                report = json.loads(out)
                code, text, _ = await run_cli("status", "--state", postgres_dsn)
                for replica in (a, b):
                    replica.process.send_signal(signal.SIGINT)
                    assert await replica.wait() == 0, replica.err.text
            nursery.cancel_scope.cancel()
    assert fake.restores == {"run-0": 1}
    code, out, _ = await run_cli("unwatch", "run-3", "--state", postgres_dsn)
    assert code == 0
    assert out.startswith("unwatched 1 run(s) in postgresql://postgres@/")
    code, out, _ = await run_cli("status", "--state", postgres_dsn, "--json")
    assert "run-3" not in {r["run_id"] for r in json.loads(out)["runs"]}
    owners = {r["run_id"]: (r["owner"] or {}).get("replica") for r in report["runs"]}
    assert len({o for o in owners.values() if o}) == 2
    assert owners[restore.model_id]
    assert "owner" in text.splitlines()[1]
    assert "Replica " in a.err.text
    assert "Traceback" not in a.err.text + b.err.text


def test_lease_is_an_option_of_a_shared_database_only(monkeypatch):
    """--lease needs a postgresql:// state; with one, the replica needs no run id."""
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    dsn = "postgresql://u@db/x"
    assert watch.parse(["--state", dsn, "--lease", "5"]).lease == 5.0
    assert watch.parse(["--state", dsn]).run_ids == ()
    for argv, message in [
        (["run-1", "--lease", "5"], "only with --state postgresql://"),
        (["--state", dsn, "--lease", "0.1"], "argument --lease: must be ≥ 1"),
    ]:
        with pytest.raises(UsageError, match=message):
            watch.parse(argv)


async def test_an_unreachable_database_exits_2_without_the_password():
    """watch --state DSN with nothing listening: exit 2, host and database named."""
    dsn = "postgresql://alice:s3cret-pw@127.0.0.1:9/prod?connect_timeout=2"
    code, _, err = await run_cli("watch", "run-1", "--state", dsn)
    assert code == 2
    assert "postgresql://alice@127.0.0.1:9/prod" in err
    assert "s3cret" not in err
    assert "Traceback" not in err


async def chaos(dsn: str, *, runs: int, corrupted: int, seconds: float, seed: int):
    """Three replicas, SIGKILLed and restarted at random; the simulator afterwards."""
    rng = random.Random(seed)
    fake = FakeTinker(api_key=KEY, seed=seed, request_log_limit=1_000_000)
    ids = [f"run-{i:03d}" for i in range(runs)]
    for run_id in ids:
        fake.add_run(run_id, checkpoints=["ckpt-0001", "ckpt-0002"])
    bad = rng.sample(ids, corrupted)
    fake.add_fault_rate(Fault.server_error(), 0.1)
    env = environ(TINKER_API_KEY=KEY)
    async with open_store(dsn) as store:  # added from anywhere: nobody holds them
        for run_id in ids:
            await store.put_run(StoredRun(run_id))
    started = []

    async def replica(argv, *, task_status=trio.TASK_STATUS_IGNORED):
        async with spawn(argv, env) as running:
            started.append(running)
            task_status.started(running)
            await running.wait()

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_tinker, fake)
        argv = replica_argv(url, dsn)
        alive = [await nursery.start(replica, argv) for _ in range(3)]
        begin = trio.current_time()

        async def corrupt():
            for run_id in bad:
                await trio.sleep(rng.uniform(0, seconds * 0.8 / corrupted))
                fake.corrupt(run_id)

        nursery.start_soon(corrupt)
        while trio.current_time() < begin + seconds:
            await trio.sleep(rng.uniform(1.0, 3.0))
            victim = alive.pop(rng.randrange(len(alive)))
            victim.process.kill()
            alive.append(await nursery.start(replica, argv))
        fake.clear_faults()

        def settled() -> bool:
            """Every corrupted run restored, and each restored model watched
            (a replica reported polling it, by GET or in a page of the list):
            a second restore would have had its chance."""
            restored = {r.source_run_id: r.model_id for r in fake.restore_log}
            if not set(restored) >= set(bad):
                return False
            lines = [line for r in started for line in r.out.lines]
            return all(
                any(f'"run_id": "{model_id}"' in line and '"polled"' in line
                    for line in lines)
                for model_id in restored.values()
            )  # fmt: skip

        # A safety net, not a time budget: only a run never restored trips it.
        await until(settled, 300)
        for running in alive:
            await running.err.wait_for("Replica ")  # started, not importing
            running.process.send_signal(signal.SIGINT)
            assert await running.wait() == 0, running.err.text
        nursery.cancel_scope.cancel()
    for running in started:
        assert "Traceback" not in running.err.text, running.err.text
    return fake, bad


async def test_chaos_exactly_one_restore_per_corrupted_run(postgres_dsn):
    """Three replicas, one SIGKILLed every few seconds, 10 % HTTP faults: one
    restore per corrupted run and none for a healthy one, as the simulator
    counts them.  How fast a dead replica's runs are taken over is a figure,
    not a promise: ``python -m benchmarks.replicas`` measures it."""
    fake, bad = await chaos(postgres_dsn, runs=24, corrupted=4, seconds=12, seed=1)
    assert fake.restores == {run_id: 1 for run_id in bad}
    assert len(fake.restore_log) == len(bad)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 5))
async def test_chaos_long(postgres_dsn, seed):
    """The chaos test over a minute, 300 runs, 30 corrupted (nightly)."""
    fake, bad = await chaos(postgres_dsn, runs=300, corrupted=30, seconds=60, seed=seed)
    assert fake.restores == {run_id: 1 for run_id in bad}
    assert len(fake.restore_log) == len(bad)
