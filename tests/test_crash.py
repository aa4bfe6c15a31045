"""Crash safety: a watcher SIGKILLed at every step of a recovery, then restarted.

Each scenario watches two corrupted and two healthy runs with ``watch
--state FILE`` in a subprocess, against the simulator on loopback.  The
watcher is killed with SIGKILL at one step of the recoveries — by itself at
a crash point (``TRIO_TINKEX_RECOVERY_CRASH_AT``), or by the test while the
simulator holds a ``load_weights`` unanswered — and started again on the
same state file with no run named.  The verdict comes from the simulator's
own counts, not from the watcher's output: exactly one restored model per
corrupted run, none for a healthy run, every stored run watched again, and
never more attempts than ``--max-attempts``.
"""

from __future__ import annotations

import json
import signal

import pytest
import trio

from trio_tinkex_recovery._failpoints import POINTS
from trio_tinkex_recovery._store import StoredRun, open_store
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

from .test_cli import KEY, cli, environ, spawn

CORRUPTED = ("bad-1", "bad-2")
HEALTHY = ("ok-1", "ok-2")
#: One scenario's guard against a hang, not a time budget: every wait in it
#: is on a condition (two watcher processes on a busy machine may be slow).
BUDGET = 600

#: Killed by the test while the simulator holds a sent load_weights.
SENT = "load-sent"


def watch_argv(url: str, *args: str) -> list[str]:
    """``watch`` against ``url``, polling fast, with no time limit of its own:
    the scenario ends each watcher (SIGKILL, SIGINT), never a clock."""
    return cli(
        "watch", *args, "--base-url", url, "--poll-interval", "0.2",
        "--backoff", "0.1",
    )  # fmt: skip


def polled(lines: list[str]) -> dict[str, int]:
    """How many polls of each run a watcher's JSON lines report."""
    counts: dict[str, int] = {}
    for line in lines:
        if '"name": "polled"' in line:
            run_id = json.loads(line)["run_id"]
            counts[run_id] = counts.get(run_id, 0) + 1
    return counts


async def scenario(tmp_path, point: str, seed: int) -> FakeTinker:
    """Kill a watcher at ``point``, start it again; the simulator afterwards."""
    state = str(tmp_path / "state.db")
    fake = FakeTinker(api_key=KEY, seed=seed, future_delay=0.05)
    for run_id in CORRUPTED + HEALTHY:
        fake.add_run(run_id, checkpoints=["ckpt-0001", "ckpt-0002"])
    for run_id in CORRUPTED:
        fake.corrupt(run_id)
    options = ("--json", "--state", state, "--max-attempts", "3")
    # Stored before the first watcher starts: what the restart must watch
    # again does not depend on how far it got before its kill (on a busy
    # machine the first detection can come before the last run is stored).
    async with open_store(state) as store:
        for run_id in CORRUPTED + HEALTHY:
            await store.put_run(StoredRun(run_id))
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(url, *CORRUPTED, *HEALTHY, *options)
            if point == SENT:
                fake.add_fault_rate(
                    Fault.latency(1.0, path="/api/v1/load_weights"), 1.0
                )
                env = environ(TINKER_API_KEY=KEY)
            else:
                env = environ(TINKER_API_KEY=KEY, TRIO_TINKEX_RECOVERY_CRASH_AT=point)
            async with spawn(argv, env) as first:
                if point == SENT:
                    await first.out.wait_until(
                        lambda: any(
                            r.path == "/api/v1/load_weights" for r in fake.requests
                        )
                    )
                    first.process.kill()
                code = await first.wait()
            assert code == -signal.SIGKILL, first.err.text
            # A load killed in flight may still be acted on by the server
            # while the next watcher starts: that one must find or share it.
            fake.clear_faults()

            # Started again, naming no run: the state file says what to do.
            argv = watch_argv(url, *options)
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as second:

                def settled() -> bool:
                    restored = {r.source_run_id: r.model_id for r in fake.restore_log}
                    if set(restored) != set(CORRUPTED):
                        return False
                    counts = polled(second.out.lines)
                    watched = [*HEALTHY, *restored.values()]
                    return all(counts.get(run_id, 0) >= 2 for run_id in watched)

                await second.out.wait_until(settled)
                second.process.send_signal(signal.SIGINT)
                assert await second.wait() == 0, second.err.text
            nursery.cancel_scope.cancel()
    # Corrupted from the start, the old runs never poll healthy: only the
    # journal stands between the restart and a second restore.
    attempts = [
        json.loads(line)["measurements"]["attempt"]
        for line in first.out.lines + second.out.lines
        if '"name": "started"' in line
    ]
    assert max(attempts, default=1) <= 3
    return fake


@pytest.mark.parametrize("point", [*POINTS, SENT])
async def test_a_watcher_killed_at_any_step_restores_each_run_exactly_once(
    tmp_path, point
):
    """SIGKILL at each step, restart: one restore per corrupted run, none else."""
    fake = await scenario(tmp_path, point, seed=1)
    assert fake.restores == {run_id: 1 for run_id in CORRUPTED}


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 6))
@pytest.mark.parametrize("point", [*POINTS, SENT])
async def test_crash_at_any_step_over_more_seeds(tmp_path, point, seed):
    """The crash scenario over more seeds (nightly)."""
    fake = await scenario(tmp_path, point, seed=seed)
    assert fake.restores == {run_id: 1 for run_id in CORRUPTED}
