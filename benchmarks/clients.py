"""The Trio clients the benchmark compares, one per process.

    python -m benchmarks.clients monitor|sequential|httpx --url URL --key KEY \\
        --runs N --interval I [--jitter J] [--stagger] [--polling P] [--all]
    python -m benchmarks.clients recover --url URL --key KEY --runs M \\
        --max-concurrent K

Each speaks the line protocol of `benchmarks._protocol` with the driver.

``monitor``
    This library: `open_monitor` over the native client (as
    `open_service_client` makes it), one polling task per run, one GET per
    poll (``--polling each``, the default here).  Recovery is stubbed out
    (the service hands back no client, without a request): the figures are
    those of watching, and a detection costs no more requests.  With
    ``--all`` it watches every run the simulator holds with
    `Monitor.monitor_all` instead of one `monitor_run` each: all are found
    by one sweep of list pages and polled by pages from then on
    (``--polling auto``).
``sequential``
    The reference implementation's loop (``Tinkex.Recovery.Monitor``): one
    timer; every ``interval`` it polls every run, one after another, through
    the same native client, then arms the timer again.
``httpx``
    The floor for any httpx client: bare ``httpx.AsyncClient.get`` calls
    over the same connections as the library, one task per run on the same
    drift-free schedule, ``json.loads`` of the body and a look at
    ``corrupted``.
``recover``
    The makespan of recoveries: `open_monitor` with ``max_concurrent=K``
    and real restores; see `recover_client`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import httpx
import trio

from trio_tinkex_recovery import (
    Config,
    Policy,
    open_monitor,
    open_service_client,
)
from trio_tinkex_recovery._wire import HTTPSettings, _http, open_tuned_service_client

from ._protocol import announce, client_arguments, run_name, wait_for_start

WARM_UP_REQUESTS = 5


class Clock:
    """Converts between Trio time and the machine's monotonic clock."""

    def __init__(self) -> None:
        self.offset = trio.current_time() - time.monotonic()

    def trio(self, monotonic: float) -> float:
        return monotonic + self.offset

    def monotonic(self, trio_time: float) -> float:
        return trio_time - self.offset


def _connections(args: Any) -> int:
    return int(args.connections or HTTPSettings().max_connections)


def _service(args: Any) -> AbstractAsyncContextManager[Any]:
    """The native client, as `open_service_client` opens it.

    The private variant only to try other pool sizes (``--connections``).
    """
    config = Config(api_key=args.key, base_url=args.url)
    if not args.connections:
        return open_service_client(config)
    settings = HTTPSettings(max_connections=args.connections)
    return open_tuned_service_client(config, settings=settings)


async def _ready() -> tuple[float, float]:
    return await trio.to_thread.run_sync(wait_for_start)


async def _add_runs(
    args: Any,
    clock: Clock,
    start: float,
    t0: dict[str, float],
    watch: Any,
) -> None:
    """Start watching every run: all at ``start``, or spread over an interval."""
    spacing = args.interval / args.runs if args.stagger else 0.0
    for index in range(args.runs):
        await trio.sleep_until(clock.trio(start + index * spacing))
        run_id = run_name(index)
        t0[run_id] = time.monotonic()
        await watch(run_id)


class _NoRestore:
    """A service that restores nothing, at once and without a request."""

    async def create_training_client_from_state(self, path: str) -> None:
        await trio.lowlevel.checkpoint()

    async def create_training_client_from_state_with_optimizer(self, path: str) -> None:
        await trio.lowlevel.checkpoint()

    def create_rest_client(self) -> Any:
        raise NotImplementedError


async def monitor_client(args: Any) -> dict[str, Any]:
    """This library's monitor, watching for corruption only."""
    t0: dict[str, float] = {}
    detected: dict[str, float] = {}
    policy = Policy(
        enabled=True,
        poll_interval=args.interval,
        jitter=args.jitter,
        follow_recovered=False,
    )
    async with _service(args) as service:
        rest = service.create_rest_client()
        for _ in range(WARM_UP_REQUESTS):
            await rest.get_training_run(run_name(0))
        start, end = await _ready()
        clock = Clock()
        with trio.move_on_at(clock.trio(end)):
            async with open_monitor(
                policy=policy, rest=rest, service=_NoRestore(), polling=args.polling
            ) as monitor:
                async with monitor.subscribe(max_buffer=2**16) as events:
                    async with trio.open_nursery() as nursery:
                        if args.all:
                            nursery.start_soon(_watch_all, clock, start, t0, monitor)
                        else:
                            nursery.start_soon(
                                _add_runs, args, clock, start, t0, monitor.monitor_run
                            )
                        async for event in events:
                            if event.name == "detected":
                                detected[event.run_id] = clock.monotonic(event.time)
        stats = monitor.statistics()
    return {
        "t0": t0,
        "detected": detected,
        "poll_errors": stats.poll_errors,
        "polls": stats.polls,
        "dropped_events": stats.dropped_events,
        "get_requests": stats.get_requests,
        "list_requests": stats.list_requests,
    }


async def _watch_all(
    clock: Clock, start: float, t0: dict[str, float], monitor: Any
) -> None:
    """Watch every run at ``start``: one sweep finds them all."""
    await trio.sleep_until(clock.trio(start))
    await monitor.monitor_all(active_within=math.inf)
    for run_id in monitor.monitored_runs:
        t0[run_id] = start


async def sequential_client(args: Any) -> dict[str, Any]:
    """The reference loop: sweep every run in turn, then wait an interval."""
    detected: dict[str, float] = {}
    errors = polls = 0
    async with _service(args) as service:
        rest = service.create_rest_client()
        for _ in range(WARM_UP_REQUESTS):
            await rest.get_training_run(run_name(0))
        start, end = await _ready()
        clock = Clock()
        runs = dict.fromkeys(run_name(index) for index in range(args.runs))
        # tinkex arms a timer when the first run is added: the first sweep
        # is one interval later, and each next one an interval after the
        # previous sweep ends.
        t0 = dict.fromkeys(runs, start + args.interval)
        with trio.move_on_at(clock.trio(end)):
            await trio.sleep_until(clock.trio(start + args.interval))
            while runs:
                for run_id in list(runs):
                    polls += 1
                    try:
                        run = await rest.get_training_run(run_id)
                    except Exception:
                        errors += 1
                        continue
                    if run.corrupted:
                        detected[run_id] = time.monotonic()
                        del runs[run_id]
                await trio.sleep(args.interval)
    return {"t0": t0, "detected": detected, "poll_errors": errors, "polls": polls}


async def httpx_client(args: Any) -> dict[str, Any]:
    """A bare httpx GET loop: one task per run, the library's pool size."""
    t0: dict[str, float] = {}
    detected: dict[str, float] = {}
    counts = {"errors": 0, "polls": 0}
    interval = args.interval
    # The same connections as the library, arranged as it arranges them
    # (pools of at most _POOL_SIZE, tasks queueing on a Trio semaphore), so
    # that the difference is what the library does above httpx.
    connections = _connections(args)
    per_pool = getattr(_http, "_POOL_SIZE", connections)
    sizes = [min(per_pool, connections - n) for n in range(0, connections, per_pool)]
    free = list(sizes)
    slots = trio.Semaphore(connections)
    async with AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=args.url,
                    headers={"X-API-Key": args.key, "Accept": "application/json"},
                    limits=httpx.Limits(
                        max_connections=size, max_keepalive_connections=size
                    ),
                    timeout=60.0,
                )
            )
            for size in sizes
        ]

        async def get(run_id: str) -> Any:
            async with slots:
                index = next(i for i, n in enumerate(free) if n)
                free[index] -= 1
                try:
                    response = await pools[index].get(
                        f"/api/v1/training_runs/{run_id}",
                        params={"access_scope": "owned"},
                    )
                finally:
                    free[index] += 1
            response.raise_for_status()
            return json.loads(response.content)

        for _ in range(WARM_UP_REQUESTS):
            await get(run_name(0))
        start, end = await _ready()
        clock = Clock()

        async def poll_forever(run_id: str) -> None:
            begin = trio.current_time()
            slot = 0
            while True:
                await trio.sleep_until(begin + slot * interval)
                counts["polls"] += 1
                try:
                    body = await get(run_id)
                except httpx.HTTPError:
                    counts["errors"] += 1
                else:
                    if body.get("corrupted"):
                        detected[run_id] = time.monotonic()
                        return
                elapsed = trio.current_time() - begin
                slot = max(slot + 1, math.ceil(elapsed / interval))

        with trio.move_on_at(clock.trio(end)):
            async with trio.open_nursery() as nursery:

                async def watch(run_id: str) -> None:
                    nursery.start_soon(poll_forever, run_id)
                    await trio.lowlevel.checkpoint()

                await _add_runs(args, clock, start, t0, watch)
                await trio.sleep_forever()
    return {
        "t0": t0,
        "detected": detected,
        "poll_errors": counts["errors"],
        "polls": counts["polls"],
    }


async def _flag(url: str, run_ids: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url) as control:
        response = await control.post("/_bench/corrupt", json={"run_ids": run_ids})
        response.raise_for_status()


async def recover_client(args: Any) -> dict[str, Any]:
    """Makespan of ``--runs`` simultaneous corruptions at ``--max-concurrent``.

    The simulator holds ``--runs`` runs for the batch and ``--solo + 1``
    more.  First one recovery alone (it opens the session), then
    ``--solo`` more, one at a time: their median time from ``detected`` to
    ``completed`` is the duration of one recovery, T1.  Then the batch:
    every run is flagged (one control request), then watched; its first
    poll finds it corrupted at once.  The makespan runs from the batch's
    first ``detected`` to its last ``completed``; the ideal is
    ``ceil(M / K) * T1``.
    """
    policy = Policy(enabled=True, poll_interval=args.interval, jitter=0.0)
    batch = [run_name(index) for index in range(args.runs)]
    solo = [run_name(args.runs + index) for index in range(args.solo + 1)]
    events_seen: list[tuple[str, str, float]] = []
    cpu = [0.0, 0.0]
    async with _service(args) as service:
        rest = service.create_rest_client()
        for _ in range(WARM_UP_REQUESTS):
            await rest.get_training_run(run_name(0))
        _, end = await _ready()
        clock = Clock()
        with trio.move_on_at(clock.trio(end)) as scope:
            async with open_monitor(
                policy=policy,
                service=service,
                max_concurrent=args.max_concurrent,
                # One GET per poll, as measured before coalesced polling.
                polling="each",
            ) as monitor:
                async with monitor.subscribe(max_buffer=2**16) as events:

                    async def until_completed(run_ids: set[str]) -> None:
                        async for event in events:
                            events_seen.append(
                                (event.name, event.run_id, clock.monotonic(event.time))
                            )
                            if event.name in ("completed", "exhausted"):
                                run_ids.discard(event.run_id)
                                if not run_ids:
                                    return

                    for run_id in solo:
                        await _flag(args.url, [run_id])
                        await monitor.monitor_run(run_id)
                        await until_completed({run_id})
                    cpu[0] = time.process_time()
                    await _flag(args.url, batch)
                    for run_id in batch:
                        await monitor.monitor_run(run_id)
                    await until_completed(set(batch))
                    cpu[1] = time.process_time()
    return {
        "batch_cpu_seconds": cpu[1] - cpu[0],
        "events": events_seen,
        "solo": solo,
        "batch": batch,
        "timed_out": scope.cancelled_caught,
    }


CLIENTS = {
    "monitor": monitor_client,
    "sequential": sequential_client,
    "httpx": httpx_client,
    "recover": recover_client,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in CLIENTS:
        raise SystemExit(f"usage: python -m benchmarks.clients {'|'.join(CLIENTS)} …")
    kind, rest = argv[0], argv[1:]
    parser = client_arguments(f"python -m benchmarks.clients {kind}")
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--solo", type=int, default=3)
    parser.add_argument("--polling", default="each", choices=("auto", "list", "each"))
    parser.add_argument("--all", action="store_true", help="watch with monitor_all")
    args = parser.parse_args(rest)
    result = trio.run(CLIENTS[kind], args)
    announce({"result": result})


if __name__ == "__main__":
    main()
