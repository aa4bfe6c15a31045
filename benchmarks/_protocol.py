"""How the driver and a client process talk: JSON lines on stdin and stdout.

Standard library only: the official SDK's client imports this from another
virtualenv, where neither this package nor trio need be installed.

1. The client sets itself up (imports, connection, a few warm-up requests)
   and prints ``{"ready": true}``.
2. The driver measures the client's fixed cost (its RSS now) and answers one
   line, ``{"start": S, "end": E}``: monotonic times (``time.monotonic()``,
   one clock for every process on the machine).
3. From ``S`` the client starts watching its runs; at ``E`` it stops and
   prints its result: ``{"t0": {run_id: first_due}, "detected": {run_id:
   time}, "poll_errors": n, ...}``, every time on the monotonic clock.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def client_arguments(prog: str) -> argparse.ArgumentParser:
    """The options every client takes."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=0)
    parser.add_argument(
        "--stagger",
        action="store_true",
        help="add the runs one by one over the first interval",
    )
    return parser


def announce(message: dict[str, Any]) -> None:
    """Print one JSON line for the driver."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def wait_for_start() -> tuple[float, float]:
    """Say ready; block until the driver answers the start and end times."""
    announce({"ready": True})
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("the driver went away")
    times = json.loads(line)
    return float(times["start"]), float(times["end"])


def run_name(index: int) -> str:
    """The id of run number ``index`` (as ``benchmarks.server`` names them)."""
    return f"run-{index:05d}"
