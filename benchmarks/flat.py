"""Regression guard: does the monitor's cost per poll stay flat with the fleet?

    python -m benchmarks.flat [--sizes 1000,100000] [--intervals 4] [--profile]
    python -m benchmarks.flat --sizes 100000 --latencies 0.01,0.05,0.2

Watches every run of an in-memory fleet with `Monitor.monitor_all`
(polled by list pages, the default event stream subscribed and drained,
as the benchmark's ``list`` client does) under Trio's ``MockClock``:
time jumps whenever every task waits, so a run of 100,000 runs takes
seconds, and the figures are the monitor's own CPU, free of the network
and of the simulator.  Each page is JSON-decoded from bytes, as off the
wire.  For each size it reports the process CPU time per poll over the
measured intervals (the first interval, when runs are found, excluded),
the share of it the cyclic garbage collector took (``gc.callbacks``),
and the resident memory per run; then the ratio of the largest size's
cost per poll to the smallest's.  The target (issue 29): at most 1.25.

With ``--latencies``, the largest size is run again at each request
latency (Trio time, so no CPU limit): polls against the demand show
whether a sweep's throughput is capped by latency rather than by CPU.

Not a timed test: run it by hand, or in CI as a report.  ``--profile``
writes a cProfile of the measured window of each size to
``flat-SIZE.prof``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import sys
import time
from typing import Any, Literal

import psutil
import trio
import trio.testing

from trio_tinkex_recovery import (
    Checkpoint,
    Policy,
    TrainingRun,
    TrainingRunPage,
    open_monitor,
)

from ._protocol import run_name

#: The target: cost per poll at the largest size over that at the smallest.
TARGET_RATIO = 1.25


def _run_json(index: int) -> dict[str, Any]:
    run_id = run_name(index)
    ckpt = {
        "checkpoint_id": "weights/ckpt-0002",
        "checkpoint_type": "training",
        "time": "2025-01-01T00:02:00Z",
        "tinker_path": f"tinker://{run_id}/weights/ckpt-0002",
        "size_bytes": None,
        "public": False,
        "expires_at": None,
    }
    return {
        "training_run_id": run_id,
        "base_model": "Qwen/Qwen3-8B",
        "model_owner": "fake-user",
        "is_lora": True,
        "lora_rank": 32,
        "corrupted": False,
        "last_request_time": "2025-01-01T00:02:00Z",
        "last_checkpoint": ckpt,
        "last_sampler_checkpoint": None,
        "user_metadata": None,
    }


class MemoryFleet:
    """A listing REST client over a fixed fleet: pages decoded from bytes."""

    def __init__(self, runs: int, *, page_size: int = 100, latency: float) -> None:
        self.runs = runs
        self.latency = latency
        self._pages: dict[int, bytes] = {}
        self._page_size = page_size
        for offset in range(0, runs, page_size):
            items = [_run_json(i) for i in range(offset, min(runs, offset + page_size))]
            self._pages[offset] = json.dumps(items).encode()

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: Literal["owned", "accessible"] = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        await trio.sleep(self.latency)
        if limit == self._page_size and offset in self._pages:
            items = json.loads(self._pages[offset])
        else:
            end = min(self.runs, offset + limit)
            items = [_run_json(i) for i in range(offset, end)]
        cursor = {"offset": offset, "limit": limit, "total_count": self.runs}
        return TrainingRunPage.from_json({"training_runs": items, "cursor": cursor})

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        await trio.sleep(self.latency)
        return []

    async def get_training_run(self, run_id: str) -> TrainingRun:
        await trio.sleep(self.latency)
        return TrainingRun.from_json(_run_json(int(run_id.rsplit("-", 1)[1])))


class _NoRestore:
    async def create_training_client_from_state(self, path: str) -> None:
        await trio.lowlevel.checkpoint()

    async def create_training_client_from_state_with_optimizer(self, path: str) -> None:
        await trio.lowlevel.checkpoint()

    def create_rest_client(self) -> Any:
        raise NotImplementedError


class _GcTimer:
    """Seconds the cyclic collector ran, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            self.collections += 1


async def _measure(
    runs: int, intervals: int, interval: float, latency: float, profile: bool
) -> dict[str, Any]:
    process = psutil.Process()
    fleet = MemoryFleet(runs, latency=latency)
    gc.collect()
    rss0 = process.memory_info().rss
    policy = Policy(enabled=True, poll_interval=interval, follow_recovered=False)
    result: dict[str, Any] = {"runs": runs}
    async with open_monitor(
        policy=policy, rest=fleet, service=_NoRestore(), polling="auto"
    ) as monitor:
        async with monitor.subscribe(max_buffer=2**16) as events:

            async def drain() -> None:
                async for _ in events:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                start = trio.current_time()
                await monitor.monitor_all(active_within=math.inf)
                await trio.sleep_until(start + interval * 1.5)
                rss1 = process.memory_info().rss
                timer = _GcTimer()
                gc.callbacks.append(timer)
                profiler = cProfile.Profile() if profile else None
                polls0 = monitor.statistics().polls
                cpu0 = time.process_time()
                if profiler is not None:
                    profiler.enable()
                await trio.sleep_until(start + interval * (1.5 + intervals))
                if profiler is not None:
                    profiler.disable()
                cpu = time.process_time() - cpu0
                polls = monitor.statistics().polls - polls0
                gc.callbacks.remove(timer)
                nursery.cancel_scope.cancel()
        stats = monitor.statistics()
    if profiler is not None:
        profiler.dump_stats(f"flat-{runs}.prof")
    result.update(
        polls=polls,
        demand=runs * intervals,
        cpu_seconds=cpu,
        us_per_poll=cpu / polls * 1e6 if polls else math.nan,
        gc_share=timer.seconds / cpu if cpu else 0.0,
        gc_collections=timer.collections,
        kib_per_run=(rss1 - rss0) / runs / 1024,
        poll_errors=stats.poll_errors,
        get_requests=stats.get_requests,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flat")
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--latencies", default="", help="comma list, seconds")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    for runs in sizes:
        result = trio.run(
            _measure,
            runs,
            args.intervals,
            args.interval,
            args.latency,
            args.profile,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        results.append(result)
        print(
            f"{runs:>9,} runs: {result['polls']:,} polls (demand "
            f"{result['demand']:,}), {result['us_per_poll']:.1f} µs CPU/poll, "
            f"GC {result['gc_share']:.0%} ({result['gc_collections']} passes), "
            f"{result['kib_per_run']:.2f} KiB/run",
            flush=True,
        )
    first, last = results[0], results[-1]
    ratio = last["us_per_poll"] / first["us_per_poll"]
    verdict = "ok" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(
        f"cost per poll {last['runs']:,} / {first['runs']:,} runs: {ratio:.2f} "
        f"(target ≤ {TARGET_RATIO}: {verdict})"
    )
    latencies = [float(x) for x in args.latencies.split(",") if x]
    for latency in latencies:
        result = trio.run(
            _measure,
            last["runs"],
            args.intervals,
            args.interval,
            latency,
            False,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        span = args.intervals * args.interval
        print(
            f"{last['runs']:>9,} runs at {latency * 1000:.0f} ms a request: "
            f"{result['polls'] / span:,.0f} polls/s (demand "
            f"{result['demand'] / span:,.0f}), "
            f"{result['us_per_poll']:.1f} µs CPU/poll",
            flush=True,
        )
        results.append({**result, "latency": latency})
    print(json.dumps({"results": results, "ratio": ratio}), file=sys.stderr)


if __name__ == "__main__":
    main()
