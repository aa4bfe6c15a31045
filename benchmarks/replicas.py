"""``python -m benchmarks.replicas``: what replicas on PostgreSQL cost, and takeover.

Three replicas (three monitors, each with its own store and connection
pool, in one process) share a throwaway PostgreSQL (``pgserver``) holding
``--runs`` runs (10,000 by default), polled through a REST client that
answers at once, so the figures are the leases', not HTTP's:

- **Database calls per second per replica** in the steady state (each call
  is one transaction: a renewal, a claim, a give-back or a read), and
  **client CPU** of the whole process per second (three replicas, polling
  included), over a ``--window``.
- **Takeover after a death**: one replica stops without a word (no lease
  given back, as after SIGKILL); for each of its runs, the seconds until
  another replica polled it.  p50, p99 and the maximum, against the bound
  ``L + L/3 + poll_interval``.

Prints a Markdown table and writes ``benchmarks/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from trio_tinkex_recovery import Policy, TrainingRun, open_monitor
from trio_tinkex_recovery._store._postgres import PostgresStore, open_postgres_store

HERE = Path(__file__).resolve().parent


class _Rest:
    """Answers every poll at once; notes when each run was polled after a death."""

    def __init__(self, taken: dict[str, float], dead: dict[str, Any]) -> None:
        self._taken = taken
        self._dead = dead
        self._run = TrainingRun.from_json(
            {
                "training_run_id": "x",
                "base_model": "m",
                "model_owner": "o",
                "is_lora": True,
                "last_request_time": "2026-12-01T00:00:00Z",
            }
        )

    async def get_training_run(self, run_id: str) -> Any:
        await trio.lowlevel.checkpoint()
        if self._dead.get("at") is not None and run_id not in self._taken:
            self._taken[run_id] = trio.current_time()
        return self._run

    async def list_checkpoints(self, run_id: str) -> list[Any]:
        await trio.lowlevel.checkpoint()
        return []


async def _until(condition: Any) -> None:
    """Return once ``condition()`` holds, checked ten times a second."""
    while True:
        if condition():
            return
        await trio.sleep(0.1)


def _count_calls(store: PostgresStore, calls: Counter[str], name: str) -> None:
    run = store._run

    async def counted(what: str, fn: Any) -> Any:
        calls[name] += 1
        return await run(what, fn)

    store._run = counted  # type: ignore[method-assign]


async def bench(dsn: str, runs: int, lease: float, poll: float, window: float) -> dict:
    seed = await open_postgres_store(dsn)
    await seed._run(
        "write",
        lambda db, _: db.execute(
            "INSERT INTO runs (run_id, metadata, lease_until) SELECT "
            "'run-' || lpad(i::text, 6, '0'), '{}', now() "
            "FROM generate_series(1, %s) AS i",
            (runs,),
        ),
    )
    await seed.aclose()
    policy = Policy(enabled=True, poll_interval=poll, jitter=0.5)
    calls: Counter[str] = Counter()
    dead: dict[str, Any] = {"at": None}
    taken: dict[str, float] = {}
    replicas: list[dict[str, Any]] = []

    async def replica(name: str, task_status: Any) -> None:
        store = await open_postgres_store(dsn, lease=lease)
        _count_calls(store, calls, name)
        scope = trio.CancelScope()
        rest = _Rest(taken, dead) if name != "a" else _Rest({}, {"at": None})
        try:
            with scope:
                async with open_monitor(policy=policy, rest=rest, store=store) as m:
                    task_status.started()
                    replicas.append(
                        {"name": name, "monitor": m, "scope": scope, "store": store}
                    )
                    await trio.sleep_forever()
        finally:
            await store.aclose()

    async with trio.open_nursery() as nursery:
        for name in "abc":
            await nursery.start(replica, name)
        share = math.ceil(runs / 3)
        settle = trio.current_time()

        def balanced() -> bool:
            held = [r["monitor"].statistics().leases_held for r in replicas]
            return max(held) <= share and sum(held) == runs

        with trio.fail_after(10 * lease):
            await _until(balanced)
        settled = trio.current_time() - settle
        await trio.sleep(lease)  # the steady state
        calls.clear()
        cpu0, t0 = time.process_time(), trio.current_time()
        await trio.sleep(window)
        elapsed = trio.current_time() - t0
        cpu = (time.process_time() - cpu0) / elapsed
        per_replica = {name: count / elapsed for name, count in calls.items()}
        victim = replicas[0]
        orphans = set(victim["monitor"].monitored_runs)
        # Dies without a word: nothing given back (as after SIGKILL).
        victim["store"].release = trio.lowlevel.checkpoint
        victim["scope"].cancel()
        dead["at"] = died = trio.current_time()
        bound = lease + lease / 3 + poll
        with trio.move_on_after(bound + 10):
            await _until(lambda: orphans <= taken.keys())
        nursery.cancel_scope.cancel()
    delays = sorted(taken[r] - died for r in orphans if r in taken)
    quantiles = statistics.quantiles(delays, n=100) if len(delays) > 1 else delays * 99
    return {
        "runs": runs,
        "lease_s": lease,
        "poll_interval_s": poll,
        "settled_s": settled,
        "db_calls_per_s_per_replica": per_replica,
        "client_cpu_s_per_s": cpu,
        "orphans": len(orphans),
        "taken_over": len(delays),
        "takeover_p50_s": quantiles[49],
        "takeover_p99_s": quantiles[98],
        "takeover_max_s": delays[-1] if delays else None,
        "takeover_bound_s": bound,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--poll", type=float, default=30.0, help="poll interval")
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ttr-bench-pg-") as folder:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            result = trio.run(
                bench, server.get_uri(), args.runs, args.lease, args.poll, args.window
            )
        finally:
            server.cleanup()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    rates = result["db_calls_per_s_per_replica"]
    print("| figure | value |\n| --- | --- |")
    print(
        f"| database calls per second per replica ({args.runs:,} runs, 3 "
        f"replicas, lease {args.lease:g} s) | "
        + " / ".join(f"{rate:.2f}" for rate in rates.values())
        + " |"
    )
    print(
        f"| client CPU, whole process (3 replicas, polls every {args.poll:g} s "
        f"included) | {result['client_cpu_s_per_s'] * 100:.1f} % of a core |"
    )
    print(
        f"| takeover after a death ({result['taken_over']} of "
        f"{result['orphans']} runs): p50 / p99 / max | "
        f"{result['takeover_p50_s']:.2f} / {result['takeover_p99_s']:.2f} / "
        f"{result['takeover_max_s']:.2f} s (bound {result['takeover_bound_s']:.1f} s) |"
    )


if __name__ == "__main__":
    main()
