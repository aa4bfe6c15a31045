"""Runs one scenario: a simulator process, a client process, and the clock.

The driver itself does no HTTP on the measured path: it watches the client
process from outside (``psutil``: CPU time of all its threads, RSS), tells
the simulator when to flag runs, and reads the simulator's notes of when
each poll arrived.  All times are ``time.monotonic()``, which every process
on the machine shares.
"""

from __future__ import annotations

import json
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

import psutil

from . import _metrics
from ._protocol import run_name
from .server import API_KEY

ROOT = Path(__file__).resolve().parent.parent

#: The clients, and the module each runs as.
CLIENT_MODULES = {
    "monitor": ["benchmarks.clients", "monitor"],
    "list": ["benchmarks.clients", "monitor", "--all", "--polling", "auto"],
    "sequential": ["benchmarks.clients", "sequential"],
    "httpx": ["benchmarks.clients", "httpx"],
    "sdk": ["benchmarks.sdk_client"],
}
#: Clients that add their runs over the first interval (one task per run).
STAGGERED = frozenset({"monitor", "httpx", "sdk"})
#: How long a process may take to start and say it is ready.
START_TIMEOUT = 120.0


class ScenarioError(RuntimeError):
    """A child process failed; the message ends with its stderr."""


@dataclass(frozen=True)
class Settings:
    """What every scenario of one benchmark run shares."""

    interval: float = 5.0
    latency: float = 0.05
    #: The measurement window, in intervals, after one interval of warm-up.
    duration: float = 2.0
    jitter: float = 0.0
    #: Runs flagged corrupted per scenario (``None``: 10% of the runs, 10-100).
    flags: int | None = None
    python: str = sys.executable
    sdk_python: str | None = None
    seed: int = 0
    connections: int = 0
    #: Where to write a py-spy profile of each client's measurement window.
    profile_dir: str | None = None

    def flag_count(self, runs: int) -> int:
        if self.flags is not None:
            return min(self.flags, runs)
        return min(runs, max(10, min(100, runs // 10)))


class Child:
    """A child process that speaks JSON lines on stdout."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str] | None = None, name: str
    ) -> None:
        self.name = name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            env=env,
            text=True,
            bufsize=1,
        )
        self.process = psutil.Process(self.popen.pid)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_tail(self, limit: int = 3000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-limit:]

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON object the child prints (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ScenarioError(
                    f"{self.name}: no answer in {timeout:.0f} s\n{self.stderr_tail()}"
                ) from None
            if line is None:
                self.popen.wait()
                raise ScenarioError(
                    f"{self.name} exited ({self.popen.returncode})\n"
                    f"{self.stderr_tail()}"
                )
            line = line.strip()
            if line.startswith("{"):
                try:
                    return dict(json.loads(line))
                except ValueError:
                    continue

    def send(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(message) + "\n")
        self.popen.stdin.flush()

    def cpu(self) -> float:
        """CPU seconds (user + system) of all the child's threads so far."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Server(Child):
    """``python -m benchmarks.server`` with its control API."""

    def __init__(self, runs: int, latency: float, python: str) -> None:
        super().__init__(
            [
                python,
                "-m",
                "benchmarks.server",
                "--runs",
                str(runs),
                "--latency",
                str(latency),
            ],
            name="simulator",
        )
        self.url = str(self.read(START_TIMEOUT)["url"])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())


def sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _profile(
    settings: Settings, client: Child, name: str, seconds: float
) -> subprocess.Popen[bytes] | None:
    """py-spy, sampling the client (without pausing it) for ``seconds``."""
    if settings.profile_dir is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(settings.profile_dir)
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(client.popen.pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out / f"{name}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def client_command(kind: str, settings: Settings) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    python = settings.python
    if kind == "sdk":
        if settings.sdk_python is None:
            raise ScenarioError("sdk: no Python with the tinker SDK")
        python = settings.sdk_python
        env["TINKER_TELEMETRY"] = "0"
        env["HOME"] = tempfile.mkdtemp(prefix="bench-sdk-home-")
        env.pop("TINKER_API_KEY", None)
        env.pop("TINKER_BASE_URL", None)
    return [python, "-m", *CLIENT_MODULES[kind]], env


def watch(
    kind: str,
    runs: int,
    settings: Settings,
    *,
    detect: bool = True,
) -> dict[str, Any]:
    """One client watching ``runs`` runs: throughput, timing, cost, detection.

    Timeline (``S`` = start, ``I`` = interval): the client adds its runs over
    ``[S, S + I)`` (the reference loop takes them all at ``S`` and first
    polls at ``S + I``); the measurement window is ``[S + I, S + I + D)``;
    then the simulator flags runs at random times over one interval, and the
    client keeps watching for ``I * (1 + jitter) + 2 * latency + 1 s`` more.
    """
    interval = settings.interval
    rng = random.Random(f"{settings.seed}-{kind}-{runs}")
    argv, env = client_command(kind, settings)
    argv += [
        "--url",
        "",
        "--key",
        API_KEY,
        "--runs",
        str(runs),
        "--interval",
        str(interval),
        "--jitter",
        str(settings.jitter),
    ]
    if settings.connections:
        argv += ["--connections", str(settings.connections)]
    if kind in STAGGERED:
        argv.append("--stagger")
    load_before = os.getloadavg()
    with Server(runs, settings.latency, settings.python) as server:
        argv[argv.index("--url") + 1] = server.url
        with Child(argv, env=env, name=kind) as client:
            client.read(START_TIMEOUT)  # ready
            rss_fixed = client.rss()
            start = time.monotonic() + 0.5
            w0 = start + interval
            w1 = w0 + settings.duration * interval
            plan: list[tuple[str, float]] = []
            if detect:
                flagged = rng.sample(range(runs), settings.flag_count(runs))
                plan = [(run_name(i), w1 + rng.uniform(0, interval)) for i in flagged]
                end = (
                    w1
                    + interval
                    + interval * (1 + settings.jitter)
                    + 2 * settings.latency
                    + 1.0
                )
                if kind == "sequential":
                    # A sweep takes a request latency per run; wait for one
                    # more, within reason (longer waits are reported as such).
                    end += min(runs * (settings.latency + 0.005), 30.0)
            else:
                end = w1 + 0.5
            client.send({"start": start, "end": end})
            if plan:
                server.call("POST", "/_bench/flags", {"plan": plan})
            sleep_until(w0)
            cpu0, server_cpu0 = client.cpu(), server.process.cpu_times()
            profiler = _profile(settings, client, f"{kind}-{runs}", w1 - w0)
            sleep_until(w1)
            cpu1, server_cpu1 = client.cpu(), server.process.cpu_times()
            rss = client.rss()
            if profiler is not None:
                profiler.wait()
            result = client.read(end - time.monotonic() + 120)["result"]
            report = server.call("GET", "/_bench/report")
    arrivals = {run_id: sorted(times) for run_id, times in report["arrivals"].items()}
    span = w1 - w0
    polls = _metrics.count_between(arrivals, w0, w1)
    requests = {
        kind: _metrics.count_between({kind: sorted(report[kind])}, w0, w1)
        for kind in ("gets", "lists")
    }
    # Polls by pages move onto one schedule shared by the runs: their
    # on-time ratio is measured between consecutive polls of each run.
    gaps = _metrics.gap_on_time(arrivals, interval, (w0, w1), runs=result["t0"])
    server_cpu = sum(server_cpu1[:2]) - sum(server_cpu0[:2])
    flags = {run_id: at for run_id, at in report["flags"].items()}
    return {
        "client": kind,
        "runs": runs,
        "interval": interval,
        "latency": settings.latency,
        "jitter": settings.jitter,
        "window": span,
        "demand_per_s": runs / interval,
        "polls": polls,
        "polls_per_s": polls / span,
        "cpu_seconds": cpu1 - cpu0,
        "server_cpu_seconds": server_cpu,
        "on_time": gaps
        if kind == "list"
        else _metrics.on_time(result["t0"], arrivals, interval, (w0, w1)),
        "gap_on_time": gaps,
        "get_requests": requests["gets"],
        "list_requests": requests["lists"],
        "requests_per_run_interval": (requests["gets"] + requests["lists"])
        / (runs * span / interval),
        "cpu_us_per_poll": (cpu1 - cpu0) / polls * 1e6 if polls else None,
        "client_cores": (cpu1 - cpu0) / span,
        "server_cores": server_cpu / span,
        "rss_fixed_mib": rss_fixed / 2**20,
        "rss_per_run_kib": (rss - rss_fixed) / runs / 1024,
        "detection": _metrics.detection(flags, result["detected"], end)
        if detect
        else None,
        "detection_bound": interval * (1 + settings.jitter) + 2 * settings.latency,
        "poll_errors": result.get("poll_errors", 0),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def recover(
    max_concurrent: int, runs: int, settings: Settings, *, solo: int = 3
) -> dict[str, Any]:
    """Makespan of ``runs`` simultaneous corruptions at ``max_concurrent``."""
    argv = [
        settings.python,
        "-m",
        "benchmarks.clients",
        "recover",
        "--url",
        "",
        "--key",
        API_KEY,
        "--runs",
        str(runs),
        "--interval",
        "30",
        "--max-concurrent",
        str(max_concurrent),
        "--solo",
        str(solo),
    ]
    load_before = os.getloadavg()
    with Server(runs + solo + 1, settings.latency, settings.python) as server:
        argv[argv.index("--url") + 1] = server.url
        with Child(argv, name=f"recover K={max_concurrent}") as client:
            client.read(START_TIMEOUT)
            budget = 60 + 2.0 * math.ceil(runs / max_concurrent)
            now = time.monotonic()
            client.send({"start": now, "end": now + budget})
            result = client.read(budget + 60)["result"]
    figures = _metrics.makespan(
        result["events"], result["solo"], result["batch"], max_concurrent
    )
    figures["timed_out"] = result["timed_out"]
    # The client's CPU from flagging the batch to its last completion: one
    # Python thread cannot finish sooner than this.
    figures["batch_cpu_seconds"] = result["batch_cpu_seconds"]
    figures["latency"] = settings.latency
    figures["load_before"] = load_before
    figures["load_after"] = os.getloadavg()
    return figures
