"""The simulator in a process of its own, with a benchmark-only control API.

    python -m benchmarks.server --runs 1000 --latency 0.05

serves a `FakeTinker` holding runs ``run-00000`` … on loopback with
`serve_fake_tinker` (hypercorn, Trio worker) and prints one JSON line,
``{"url": ..., "pid": ...}``, once it listens.  Every request waits
``--latency`` seconds in the server (``FakeTinker(base_latency=...)``), a
stand-in for the network and the service's own work.

The simulator is the shipped one, unmodified (its list pages come from
an index kept in order); the wrapper app below adds what only a benchmark
needs, without touching it:

- it notes the arrival time (``time.monotonic()``, the system-wide
  monotonic clock every process on the machine shares) of every
  ``GET /api/v1/training_runs/{id}``: the moment a poll reached the service;
  and of every page of ``GET /api/v1/training_runs``, as the arrival of a
  poll of each run the page lists (the run ids are read from the answer);
- ``POST /_bench/flags {"plan": [[run_id, at], ...]}`` flags each run
  corrupted at monotonic time ``at`` (a task sleeping in the server, so the
  flag time is known to the millisecond) and notes when it did;
- ``POST /_bench/corrupt {"run_ids": [...]}`` flags runs now;
- ``GET /_bench/report`` answers the arrivals, the flag times and the
  server's own CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from collections import defaultdict
from typing import Any

import trio

from trio_tinkex_recovery.testing import FakeTinker, send_json, serve_fake_tinker

from ._protocol import run_name

API_KEY = "tml-benchmark-0123456789abcdef"
RUN_PREFIX = "/api/v1/training_runs/"
LIST_PATH = "/api/v1/training_runs"
#: A run's id in a page (checkpoints, nested in it, carry no such key).
LISTED_ID = re.compile(rb'"training_run_id":\s*"([^"]+)"')


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BenchApp:
    """The simulator's ASGI app, plus arrival notes and the ``/_bench/`` API."""

    def __init__(self, fake: FakeTinker, nursery: trio.Nursery) -> None:
        self.fake = fake
        self._inner = fake.app.for_server()
        self._nursery = nursery
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)
        #: Arrival times of the GETs of one run, and of the list pages.
        self.gets: list[float] = []
        self.lists: list[float] = []
        self.flags: dict[str, float] = {}

    # serve_fake_tinker serves ``fake.app.for_server()``; this object stands
    # in for the FakeTinker so that the app it serves is this wrapper.
    @property
    def app(self) -> BenchApp:
        return self

    def for_server(self) -> BenchApp:
        return self

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/_bench/"):
                await self._control(scope, receive, send)
                return
            if scope["method"] == "GET" and path == LIST_PATH:
                await self._listed(scope, receive, send)
                return
            if (
                scope["method"] == "GET"
                and path.startswith(RUN_PREFIX)
                and "/" not in path[len(RUN_PREFIX) :]
            ):
                now = time.monotonic()
                self.gets.append(now)
                self.arrivals[path[len(RUN_PREFIX) :]].append(now)
        await self._inner(scope, receive, send)

    async def _listed(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve a list page; each run it lists counts as polled on arrival."""
        arrived = time.monotonic()
        self.lists.append(arrived)
        body: list[bytes] = []

        async def keep(message: Any) -> None:
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            await send(message)

        await self._inner(scope, receive, keep)
        for run_id in LISTED_ID.findall(b"".join(body)):
            self.arrivals[run_id.decode()].append(arrived)

    def _flag(self, run_id: str) -> None:
        self.fake.corrupt(run_id)
        self.flags[run_id] = time.monotonic()

    async def _flag_at(self, plan: list[tuple[str, float]]) -> None:
        offset = trio.current_time() - time.monotonic()
        for run_id, at in sorted(plan, key=lambda item: item[1]):
            await trio.sleep_until(at + offset)
            self._flag(run_id)

    async def _control(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body) if body else {}
        route = (scope["method"], scope["path"])
        status, answer = 200, {}
        if route == ("POST", "/_bench/flags"):
            plan = [(str(run_id), float(at)) for run_id, at in request["plan"]]
            self._nursery.start_soon(self._flag_at, plan)
        elif route == ("POST", "/_bench/corrupt"):
            for run_id in request["run_ids"]:
                self._flag(run_id)
        elif route == ("GET", "/_bench/report"):
            answer = {
                "arrivals": self.arrivals,
                "gets": self.gets,
                "lists": self.lists,
                "flags": self.flags,
                "cpu_seconds": _cpu_seconds(),
                "requests": self.fake.requests_received,
                "restores": self.fake.restores,
            }
        else:
            status, answer = 404, {"detail": f"no route {route}"}
        await send_json(send, status, answer)


async def serve(runs: int, latency: float, host: str, port: int) -> None:
    # The request log would grow for the whole benchmark; keep a little.
    fake = FakeTinker(api_key=API_KEY, base_latency=latency, request_log_limit=100)
    for index in range(runs):
        fake.add_run(run_name(index), checkpoints=["ckpt-0001", "ckpt-0002"])
    async with trio.open_nursery() as nursery:
        app = BenchApp(fake, nursery)
        url = await nursery.start(
            lambda task_status: serve_fake_tinker(
                app,  # type: ignore[arg-type]
                host=host,
                port=port,
                task_status=task_status,
            )
        )
        print(json.dumps({"url": url, "pid": os.getpid()}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        trio.run(serve, args.runs, args.latency, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
