"""``python -m benchmarks.journal``: what the journal costs.

Three figures, printed as a Markdown table and written to
``benchmarks/results/journal.json``:

- **CPU per poll, journal off and on**: 1,000 runs polled through the
  native client over the in-process simulator, in real time (poll interval
  1 s, a 5 s window), three interleaved rounds of each; the journal writes
  nothing per healthy poll, so the ratio should be ≈ 1.
- **Restart with 10,000 stored runs**: wall-clock seconds from entering
  ``open_monitor(store=FILE)`` until every stored run is watched again (its
  polling task started), and until every one was polled once, with a REST
  client that answers at once (so the figure is the journal's and the
  monitor's, not HTTP's).
- **Journal writes per recovery**: the store calls one recovery makes with
  the native client (session, restore records, recovery records, runs).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from trio_tinkex_recovery import Config, Policy, open_monitor, open_service_client
from trio_tinkex_recovery._store import SQLiteStore, open_store
from trio_tinkex_recovery.testing import FakeTinker

HERE = Path(__file__).resolve().parent
KEY = "tml-benchmark-journal"
BASE = "https://tinker.bench"


async def cpu_per_poll(runs: int, window: float, store: str | None) -> float:
    """Process CPU µs per poll while ``runs`` runs are polled for ``window`` s."""
    fake = FakeTinker(api_key=KEY, request_log_limit=100)
    for i in range(runs):
        fake.add_run(f"run-{i:05d}", checkpoints=["ckpt-0001"])
    policy = Policy(enabled=True, poll_interval=1.0, jitter=0.5)
    config = Config(api_key=KEY, base_url=BASE)
    async with (
        open_service_client(config, transport=fake.transport()) as service,
        open_monitor(policy=policy, service=service, store=store) as monitor,
    ):
        for i in range(runs):
            await monitor.monitor_run(f"run-{i:05d}")
        await trio.sleep(1.5)  # every run polled once: the steady state
        polls0, cpu0 = monitor.statistics().polls, time.process_time()
        await trio.sleep(window)
        polls, cpu = monitor.statistics().polls - polls0, time.process_time() - cpu0
    return cpu / polls * 1e6


class _InstantRest:
    """A REST client that answers every poll at once: the same healthy run."""

    def __init__(self) -> None:
        from trio_tinkex_recovery import TrainingRun

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
        return self._run

    async def list_checkpoints(self, run_id: str) -> list[Any]:
        await trio.lowlevel.checkpoint()
        return []


async def restart(runs: int) -> tuple[float, float]:
    """Seconds until ``runs`` stored runs are watched, and until all polled."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "state.db")
        async with open_store(path):
            pass  # the schema
        with sqlite3.connect(path) as db:  # the runs, in one transaction
            db.executemany(
                "INSERT INTO runs VALUES (?, '{}', 0, NULL)",
                [(f"run-{i:05d}",) for i in range(runs)],
            )
        db.close()
        policy = Policy(enabled=True, poll_interval=3600.0, jitter=0)
        start = time.perf_counter()
        async with open_monitor(policy=policy, rest=_InstantRest(), store=path) as m:
            watching = time.perf_counter() - start
            assert len(m.monitored_runs) == runs
            async with m.subscribe(max_buffer=runs + 1) as events:
                seen = m.statistics().polled
                async for event in events:
                    seen += event.name == "polled"
                    if seen >= runs:
                        break
            polled = time.perf_counter() - start
    return watching, polled


class _CountingStore:
    """A store that counts the calls made to it (and passes them on)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self._inner = inner
        self.location = inner.location
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted


async def writes_per_recovery() -> dict[str, int]:
    """The journal writes of one recovery with the native client."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1", checkpoints=["ckpt-0001"])
    fake.corrupt("run-1")
    policy = Policy(enabled=True, poll_interval=1.0, jitter=0)
    config = Config(api_key=KEY, base_url=BASE)
    with tempfile.TemporaryDirectory() as folder:
        async with open_store(Path(folder) / "state.db") as inner:
            assert isinstance(inner, SQLiteStore)
            store = _CountingStore(inner)
            async with (
                open_service_client(config, transport=fake.transport()) as service,
                open_monitor(policy=policy, service=service, store=store) as monitor,
                monitor.subscribe() as events,
            ):
                await monitor.monitor_run("run-1")
                async for event in events:  # until the successor's first poll
                    if event.name == "polled" and event.run_id != "run-1":
                        break
    counts = dict(store.calls)
    counts.pop("load", None)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.journal")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stored", type=int, default=10_000)
    args = parser.parse_args(argv)

    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            off.append(trio.run(cpu_per_poll, args.runs, args.window, None))
            state = str(Path(folder) / f"cpu-{round_}.db")
            on.append(trio.run(cpu_per_poll, args.runs, args.window, state))
    watching, polled = trio.run(restart, args.stored)
    writes = trio.run(writes_per_recovery)
    result = {
        "cpu_us_per_poll_off": statistics.median(off),
        "cpu_us_per_poll_on": statistics.median(on),
        "ratio_on_off": statistics.median(on) / statistics.median(off),
        "restart_runs": args.stored,
        "restart_watching_s": watching,
        "restart_all_polled_s": polled,
        "writes_per_recovery": writes,
        "writes_per_recovery_total": sum(writes.values()),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "journal.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| figure | value |\n| --- | --- |")
    print(
        f"| CPU per poll, journal off / on ({args.runs} runs, median of "
        f"{args.rounds}) | {result['cpu_us_per_poll_off']:.0f} µs / "
        f"{result['cpu_us_per_poll_on']:.0f} µs (x{result['ratio_on_off']:.3f}) |"
    )
    print(
        f"| restart with {args.stored:,} stored runs: all watched / all polled "
        f"| {watching:.2f} s / {polled:.2f} s |"
    )
    detail = ", ".join(f"{k} {v}" for k, v in sorted(writes.items()))
    print(
        f"| journal writes per recovery | {result['writes_per_recovery_total']} "
        f"({detail}) |"
    )


if __name__ == "__main__":
    main()
