"""The official ``tinker`` SDK polling the same runs, as an SDK user would.

    TINKER_TELEMETRY=0 python -m benchmarks.sdk_client --url URL --key KEY \\
        --runs N --interval I [--stagger]

An asyncio program: one task per run on the same drift-free schedule as
the others, each ``await rest.get_training_run(run_id)`` on a
``tinker.RestClient`` (the SDK does the HTTP on its own event loop in a
background thread; the CPU figures include that thread).  Needs only the
standard library and ``tinker``: it may run in another virtualenv.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import warnings
from typing import Any

from ._protocol import announce, client_arguments, run_name, wait_for_start

WARM_UP_REQUESTS = 5


async def sdk_client(args: Any) -> dict[str, Any]:
    import tinker

    rest = tinker.RestClient(base_url=args.url, api_key=args.key)
    for _ in range(WARM_UP_REQUESTS):
        await rest.get_training_run(run_name(0))
    loop = asyncio.get_running_loop()
    start, end = await loop.run_in_executor(None, wait_for_start)
    offset = loop.time() - time.monotonic()
    interval = args.interval
    t0: dict[str, float] = {}
    detected: dict[str, float] = {}
    counts = {"errors": 0, "polls": 0}

    async def sleep_until(monotonic: float) -> None:
        await asyncio.sleep(max(0.0, monotonic + offset - loop.time()))

    async def poll_forever(run_id: str) -> None:
        begin = time.monotonic()
        slot = 0
        while True:
            await sleep_until(begin + slot * interval)
            counts["polls"] += 1
            try:
                run = await rest.get_training_run(run_id)
            except Exception:
                counts["errors"] += 1
            else:
                if run.corrupted:
                    detected[run_id] = time.monotonic()
                    return
            elapsed = time.monotonic() - begin
            slot = max(slot + 1, math.ceil(elapsed / interval))

    async def watch_all() -> None:
        spacing = interval / args.runs if args.stagger else 0.0
        async with asyncio.TaskGroup() as group:
            for index in range(args.runs):
                await sleep_until(start + index * spacing)
                run_id = run_name(index)
                t0[run_id] = time.monotonic()
                group.create_task(poll_forever(run_id))

    try:
        await asyncio.wait_for(watch_all(), timeout=max(0.0, end - time.monotonic()))
    except TimeoutError:
        pass
    return {
        "t0": t0,
        "detected": detected,
        "poll_errors": counts["errors"],
        "polls": counts["polls"],
    }


def main(argv: list[str] | None = None) -> None:
    args = client_arguments("python -m benchmarks.sdk_client").parse_args(argv)
    warnings.simplefilter("ignore")  # the SDK's deprecation notices
    result = asyncio.run(sdk_client(args))
    announce({"result": result})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
