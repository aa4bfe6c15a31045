"""``python -m benchmarks``: every scenario, then JSON and a Markdown table.

    python -m benchmarks                 # the full run (~15 min on 2 cores)
    python -m benchmarks --quick         # a smoke run (~3 min)
    nox -s bench -- --quick              # the same through nox

See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from . import _driver, _metrics, _report

HERE = Path(__file__).resolve().parent
#: The clients whose CPU ratio is a target: run --repeat times, interleaved.
REPEATED = ("monitor", "httpx")


def _floats(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item]


def _ints(text: str) -> list[int]:
    return [int(item.replace("_", "")) for item in text.split(",") if item]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", type=_ints, default=[100, 1000, 5000])
    parser.add_argument("--interval", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--duration", type=float, default=2.0, help="measurement window, in intervals"
    )
    parser.add_argument("--latency", type=float, default=0.05, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument(
        "--clients",
        default="monitor,list,httpx,sequential,sdk",
        help="comma list of monitor (one GET per poll), list (monitor_all, "
        "polled by list pages), httpx, sequential, sdk",
    )
    parser.add_argument(
        "--sdk-python",
        default=None,
        help="a Python with `tinker` installed (default: this one if it has "
        "it, else $BENCH_SDK_PYTHON)",
    )
    parser.add_argument("--makespan-runs", type=int, default=100)
    parser.add_argument("--concurrency", type=_ints, default=[1, 10, 50])
    parser.add_argument(
        "--capacity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search the largest number of runs on time at --capacity-interval",
    )
    parser.add_argument(
        "--capacity-intervals",
        type=_floats,
        default=[5.0, 30.0],
        help="the intervals to search the capacity at (comma list, seconds)",
    )
    parser.add_argument("--capacity-start", type=int, default=0)
    parser.add_argument(
        "--capacity-clients",
        default="monitor,list",
        help="whose capacity to search (comma list of monitor, list)",
    )
    parser.add_argument("--capacity-trials", type=int, default=5)
    parser.add_argument("--connections", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="write a py-spy profile (raw stacks) of each client's window to DIR",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of the monitor and the bare httpx loop per size, interleaved "
        "and pooled (their CPU ratio is a target; one run is noisy)",
    )
    parser.add_argument("--quick", action="store_true", help="a ~3 minute smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--notes", default="", help="added to the Markdown header")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=HERE / "RESULTS.md",
        help="where to write the table ('-' for none)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        given = set(argv)
        if "--sizes" not in given:
            args.sizes = [100, 500]
        if "--interval" not in given:
            args.interval = 2.0
        if "--makespan-runs" not in given:
            args.makespan_runs = 20
        if "--concurrency" not in given:
            args.concurrency = [1, 10]
        if "--capacity" not in given:
            args.capacity = False
        if "--repeat" not in given:
            args.repeat = 1
    return args


def find_sdk_python(option: str | None) -> str | None:
    if option:
        return option
    if importlib.util.find_spec("tinker") is not None:
        return sys.executable
    env = os.environ.get("BENCH_SDK_PYTHON")
    return env or None


def machine(sdk_python: str | None) -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("trio-tinkex-recovery", "trio", "httpx", "httpcore", "hypercorn"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "?"
    if sdk_python:
        answer = subprocess.run(
            [
                sdk_python,
                "-c",
                "import importlib.metadata as m; print(m.version('tinker'))",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        versions["tinker"] = answer.stdout.strip() or "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def kept_up(row: dict[str, Any]) -> bool:
    """On time (≥ 99 %) and sustained: polls/s within 2 % of the demand.

    Both, because a backlog that grows slowly can stay within the on-time
    tolerance for one window (3 s at a 30 s interval) and still be lost.
    """
    ratio = row["on_time"]["ratio"] or 0.0
    return (
        ratio >= _report.ON_TIME_TARGET
        and row["polls_per_s"] >= 0.98 * row["demand_per_s"]
    )


def search_capacity(
    args: argparse.Namespace,
    settings: _driver.Settings,
    seen: list[dict[str, Any]],
    interval: float,
    client: str = "monitor",
) -> dict[str, Any]:
    """The most runs the monitor keeps up with at ``interval`` (`kept_up`).

    Starts from the best rate the monitor kept up with so far (or 90 % of
    a rate it was saturated at), times the interval; steps up by 10 % while
    it keeps up, or down by 10 % until it does, then halves the gap.  Each
    trial adds the runs over one interval and measures the next (at least
    10 s).
    """
    duration = max(1.0, min(2.0, 10.0 / interval))
    settings = _driver.Settings(
        **{**settings.__dict__, "interval": interval, "duration": duration}
    )
    # A rate it kept up with, or 90 % of one it was saturated at.
    rates = [
        r["polls_per_s"] if kept_up(r) else 0.9 * r["polls_per_s"]
        for r in seen
        if r["client"] == client
    ]
    best = max(rates, default=100.0)
    start = args.capacity_start or max(100, round(0.95 * best * interval, -2))
    trials: list[dict[str, Any]] = []
    passed: int | None = None
    failed: int | None = None
    runs = int(start)
    for _ in range(args.capacity_trials):
        print(f"  capacity ({client}): {runs:,} runs at {interval:g} s …", flush=True)
        row = _driver.watch(client, runs, settings, detect=False)
        row["kept_up"] = kept_up(row)
        trials.append(row)
        print(
            f"    on time {row['on_time']['ratio']:.4f}, "
            f"{row['polls_per_s']:.0f} of {row['demand_per_s']:.0f} polls/s",
            flush=True,
        )
        if row["kept_up"]:
            passed = max(passed or 0, runs)
        else:
            failed = min(failed or runs, runs)
        if passed is not None and failed is not None:
            runs = int(round((passed + failed) / 2, -2))
            if runs in (passed, failed):
                break
        elif passed is not None:
            runs = int(round(runs * 1.1, -2))
        else:
            runs = max(100, int(round(runs * 0.9, -2)))
    return {
        "client": client,
        "interval": interval,
        "trials": trials,
        "max_runs": passed,
        "first_failure": failed,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    sdk_python = find_sdk_python(args.sdk_python) if "sdk" in clients else None
    settings = _driver.Settings(
        interval=args.interval,
        latency=args.latency,
        duration=args.duration,
        jitter=args.jitter,
        sdk_python=sdk_python,
        seed=args.seed,
        connections=args.connections,
        profile_dir=args.profile,
    )
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "command": shlex.join(
                ["nox", "-s", "bench", "--", *argv]
                if os.environ.get("NOX_CURRENT_SESSION") == "bench"
                else ["python", "-m", "benchmarks", *argv]
            ),
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(sdk_python),
            "load_before": os.getloadavg(),
            "settings": settings.__dict__,
            "notes": args.notes,
        },
        "watch": [],
        "makespan": [],
        "skipped": [],
        "errors": [],
    }
    if "sdk" in clients and sdk_python is None:
        clients.remove("sdk")
        results["skipped"].append(
            "official tinker SDK: not installed (pass --sdk-python or set "
            "BENCH_SDK_PYTHON to a Python that has it)"
        )
    for runs in args.sizes:
        rows: dict[str, list[dict[str, Any]]] = {client: [] for client in clients}
        for repeat in range(args.repeat):
            for client in clients:
                if repeat and client not in REPEATED:
                    continue
                print(f"{client}: {runs:,} runs ({repeat + 1}) …", flush=True)
                try:
                    row = _driver.watch(client, runs, settings)
                except _driver.ScenarioError as exc:
                    print(f"  failed: {exc}", flush=True)
                    results["errors"].append(f"{client} at {runs:,} runs: {exc}")
                    continue
                rows[client].append(row)
                print(
                    f"  {row['polls_per_s']:.0f} polls/s, on time "
                    f"{row['on_time']['ratio']:.4f}, "
                    f"{row['cpu_us_per_poll'] or 0:.0f} µs/poll",
                    flush=True,
                )
        results["watch"] += [_metrics.merge_watch(r) for r in rows.values() if r]
    for max_concurrent in args.concurrency:
        print(f"makespan: {args.makespan_runs} runs, K={max_concurrent} …", flush=True)
        try:
            row = _driver.recover(max_concurrent, args.makespan_runs, settings)
        except _driver.ScenarioError as exc:
            results["errors"].append(f"makespan K={max_concurrent}: {exc}")
            continue
        results["makespan"].append(row)
        print(f"  {row['makespan']} s vs ideal {row['ideal']}", flush=True)
    results["capacity"] = []
    for client in args.capacity_clients.split(",") if args.capacity else []:
        for interval in args.capacity_intervals:
            try:
                seen = results["watch"] + [
                    t for c in results["capacity"] for t in c["trials"]
                ]
                results["capacity"].append(
                    search_capacity(args, settings, seen, interval, client)
                )
            except _driver.ScenarioError as exc:
                results["errors"].append(
                    f"capacity of {client} at {interval:g} s: {exc}"
                )
    meta = results["meta"]
    meta["elapsed_s"] = time.monotonic() - started
    meta["load_after"] = os.getloadavg()
    loads = [
        load
        for row in [
            *results["watch"],
            *results["makespan"],
            *(t for c in results["capacity"] for t in c["trials"]),
        ]
        for load in (row["load_before"][0], row["load_after"][0])
    ]
    meta["load_max"] = max(loads, default=meta["load_after"][0])
    results["targets"] = _report.targets(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    text = _report.markdown(results)
    if str(args.markdown) != "-":
        args.markdown.write_text(text)
    print(text)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
