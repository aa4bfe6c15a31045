"""``python -m benchmarks.supervise``: what supervise mode costs a training job.

Two figures, against the simulator served on loopback by this process:

- **Overhead per step**: the training script (``testing._trainer``, native
  client, no pause between steps) trains ``--steps`` steps alone, then
  under `supervise` (``--poll-interval`` polls of its run, its announce
  file read every 50 ms), alternately, ``--rounds`` times each.  A step's
  time is read from the script's own log: the time between its first and
  last completed step, divided by the steps between them (start-up is left
  out).  The figure is the median over rounds.
- **Corruption to the first step on the new run**: one supervised job,
  whose current run is corrupted ``--episodes`` times in a row (each time
  once the run has saved a checkpoint); for each, the time from
  ``fake.corrupt`` to the first step the restarted script logs on its new
  run, p50 and p99.  It holds the detection (up to one poll interval), the
  stop (SIGTERM; the script's own failing request often ends it first), the
  new process's start-up (Python, imports), the restore and one step.

Every time is ``time.monotonic()``, one clock for every process of the
machine.  Prints a Markdown section for ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import trio

from trio_tinkex_recovery import Config, Policy, supervise
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

KEY = "tml-bench-supervise"
TRAINER = [sys.executable, "-m", "trio_tinkex_recovery.testing._trainer", "base"]


def read_log(path: str) -> list[tuple[int, str, float]]:
    """``(step, model_id, monotonic time)`` of each logged step."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    steps = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4:
            steps.append((int(parts[1]), parts[2], float(parts[3])))
    return steps


def per_step(steps: list[tuple[int, str, float]]) -> float:
    """Seconds per step between the first and the last logged step."""
    return (steps[-1][2] - steps[0][2]) / (len(steps) - 1)


def environ(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "TINKER_API_KEY": KEY,
        "TINKER_BASE_URL": url,
        "TRAINER_TIMES": "1",
    }


async def alone(url: str, steps: int, folder: str, n: int) -> float:
    log = os.path.join(folder, f"alone-{n}.log")
    await trio.run_process([*TRAINER, str(steps), str(steps), log], env=environ(url))
    return per_step(read_log(log))


async def supervised(
    url: str, steps: int, folder: str, n: int, interval: float
) -> float:
    log = os.path.join(folder, f"supervised-{n}.log")
    result = await supervise(
        [*TRAINER, str(steps), str(steps), log],
        policy=Policy(enabled=True, poll_interval=interval),
        config=Config(api_key=KEY, base_url=url),
        state=os.path.join(folder, f"job-{n}.json"),
        environ=environ(url),
    )
    assert result.exit_status == 0, result
    return per_step(read_log(log))


async def episodes(
    fake: FakeTinker, url: str, count: int, folder: str, interval: float
) -> list[float]:
    """Corrupt a supervised job's run ``count`` times; each restart's latency."""
    log = os.path.join(folder, "episodes.log")
    latencies: list[float] = []

    async def corrupt_each() -> None:
        for _ in range(count):
            # Once the current run saved a checkpoint (every 2 steps) and
            # logged the step after it.
            while True:
                steps = read_log(log)
                model = steps[-1][1] if steps else None
                own = [s for s, m, _ in steps if m == model]
                if len(own) >= 3:
                    break
                await trio.sleep(0.005)
            corrupted_at = time.monotonic()
            fake.corrupt(model)
            while True:
                steps = read_log(log)
                after = [t for _, m, t in steps if m != model and t > corrupted_at]
                if after:
                    latencies.append(after[0] - corrupted_at)
                    break
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:

        async def job() -> None:
            await supervise(
                [*TRAINER, "1000000", "2", log],
                policy=Policy(enabled=True, poll_interval=interval, backoff=0.1),
                config=Config(api_key=KEY, base_url=url),
                max_restarts=count,
                grace=5,
                state=os.path.join(folder, "episodes.json"),
                environ={**environ(url), "TRAINER_STEP_DELAY": "0.05"},
            )

        nursery.start_soon(job)
        await corrupt_each()
        nursery.cancel_scope.cancel()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeTinker(api_key=KEY, request_log_limit=1000)
    with tempfile.TemporaryDirectory(prefix="ttr-bench-") as folder:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            plain, watched = [], []
            for n in range(args.rounds):
                plain.append(await alone(url, args.steps, folder, n))
                watched.append(
                    await supervised(url, args.steps, folder, n, args.poll_interval)
                )
            latencies = await episodes(
                fake, url, args.episodes, folder, args.poll_interval
            )
            nursery.cancel_scope.cancel()
    return {"alone": plain, "supervised": watched, "latencies": latencies}


def report(args: argparse.Namespace, figures: dict[str, Any], took: float) -> str:
    alone = statistics.median(figures["alone"])
    watched = statistics.median(figures["supervised"])
    latencies = figures["latencies"]
    load = os.getloadavg()[0]
    return "\n".join(
        [
            "## Supervise mode: a training script under `run`",
            "",
            f"- Command: `python -m benchmarks.supervise --steps {args.steps} "
            f"--rounds {args.rounds} --episodes {args.episodes} "
            f"--poll-interval {args.poll_interval:g}` ({took:.0f} s; load "
            f"average {load:.2f} at the end)",
            "- The simulator on loopback in the benchmark's process, no added "
            "latency; the script on the native client "
            "(`trio_tinkex_recovery.testing._trainer`).",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| time per step, alone (median of {args.rounds}) | "
            f"{alone * 1000:.2f} ms |",
            f"| time per step, under `run` (median of {args.rounds}) | "
            f"{watched * 1000:.2f} ms |",
            f"| overhead per step | {(watched / alone - 1) * 100:+.1f} % |",
            f"| corruption → first step on the new run, p50 ({len(latencies)} "
            f"episodes) | {percentile(latencies, 0.5):.2f} s |",
            f"| corruption → first step on the new run, p99 | "
            f"{percentile(latencies, 0.99):.2f} s |",
            "",
        ]
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    # The engine's warnings (a run detected corrupted) are expected here.
    logging.getLogger("trio_tinkex_recovery").addHandler(logging.NullHandler())
    start = time.monotonic()
    figures = trio.run(main, args)
    print(report(args, figures, time.monotonic() - start))


if __name__ == "__main__":
    cli()
