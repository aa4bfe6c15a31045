"""Figures from raw observations: on-time ratio, percentiles, makespan."""

from __future__ import annotations

import bisect
import math
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

#: A poll is on time if it reaches the service within this fraction of the
#: interval after it was due.
ON_TIME_TOLERANCE = 0.1
#: Arrivals this much before the due time still count for that slot (the
#: clocks are one clock; this only absorbs float rounding).
EARLY_SLACK = 0.002


def count_between(arrivals: Mapping[str, Sequence[float]], lo: float, hi: float) -> int:
    """How many arrivals fall in ``[lo, hi)``."""
    total = 0
    for times in arrivals.values():
        total += bisect.bisect_left(times, hi) - bisect.bisect_left(times, lo)
    return total


def on_time(
    first_due: Mapping[str, float],
    arrivals: Mapping[str, Sequence[float]],
    interval: float,
    window: tuple[float, float],
    tolerance: float = ON_TIME_TOLERANCE,
) -> dict[str, Any]:
    """The share of due polls in ``window`` that reached the service on time.

    Run ``r`` is due at ``first_due[r] + k * interval``; a due time counts
    if its whole tolerance lies in the window.  A slot with no arrival in
    ``[due, due + tolerance * interval]`` (late, or skipped) is a miss.
    ``arrivals`` must be sorted per run.
    """
    lo, hi = window
    late_by = tolerance * interval
    due = hit = 0
    lateness: list[float] = []
    for run_id, t0 in first_due.items():
        times = arrivals.get(run_id, ())
        k = max(0, math.ceil((lo - t0) / interval))
        when = t0 + k * interval
        while when + late_by <= hi:
            due += 1
            index = bisect.bisect_left(times, when - EARLY_SLACK)
            if index < len(times):
                delay = times[index] - when
                if delay <= late_by:
                    hit += 1
                if delay < interval:
                    lateness.append(max(delay, 0.0))
            when += interval
    lateness.sort()
    return {
        "due": due,
        "on_time": hit,
        "ratio": hit / due if due else None,
        "lateness_p50": percentile(lateness, 0.5),
        "lateness_p99": percentile(lateness, 0.99),
    }


def gap_on_time(
    arrivals: Mapping[str, Sequence[float]],
    interval: float,
    window: tuple[float, float],
    *,
    runs: Iterable[str],
    tolerance: float = ON_TIME_TOLERANCE,
) -> dict[str, Any]:
    """The share of polls in ``window`` that came on time after the one before.

    For each run, every poll reaching the service in ``window`` counts as
    on time if it came at most ``(1 + tolerance) * interval`` after that
    run's previous poll; a run whose last poll is older than that at the
    end of the window counts one more (missed) poll.  This is the measure
    for runs whose schedule is shared (polled by list pages), where the due
    times of `on_time` do not apply.  ``arrivals`` must be sorted per run.
    """
    lo, hi = window
    longest = (1 + tolerance) * interval
    due = hit = 0
    lateness: list[float] = []
    for run_id in runs:
        times = arrivals.get(run_id, ())
        first = bisect.bisect_left(times, lo)
        last = bisect.bisect_left(times, hi)
        previous = times[first - 1] if first else None
        for when in times[first:last]:
            if previous is not None:
                due += 1
                late = max(when - previous - interval, 0.0)
                lateness.append(late)
                hit += when - previous <= longest
            previous = when
        if previous is None or hi - previous > longest:
            due += 1
            lateness.append(math.inf)
    lateness.sort()
    return {
        "due": due,
        "on_time": hit,
        "ratio": hit / due if due else None,
        "lateness_p50": percentile(lateness, 0.5),
        "lateness_p99": percentile(lateness, 0.99),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of sorted ``values`` (``inf`` allowed)."""
    if not values:
        return None
    return values[max(0, math.ceil(q * len(values)) - 1)]


def detection(
    flags: Mapping[str, float], detected: Mapping[str, float], deadline: float
) -> dict[str, Any]:
    """Detection latencies of the flagged runs; undetected ones are censored.

    A run not detected by ``deadline`` counts as infinitely late: if it
    decides a percentile, that percentile is reported as ``None`` with
    ``censored_after`` (the shortest wait that was cut short).
    """
    latencies = []
    censored = []
    for run_id, flagged_at in flags.items():
        if run_id in detected:
            latencies.append(detected[run_id] - flagged_at)
        else:
            censored.append(deadline - flagged_at)
    return summarize_detection(latencies, censored)


def summarize_detection(
    latencies: Sequence[float], censored: Sequence[float]
) -> dict[str, Any]:
    """Percentiles of detection latencies; see `detection`."""
    values = sorted(latencies) + [math.inf] * len(censored)

    def finite(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else value

    return {
        "flagged": len(values),
        "detected": len(latencies),
        "latencies": sorted(latencies),
        "censored": sorted(censored),
        "p50": finite(percentile(values, 0.5)),
        "p99": finite(percentile(values, 0.99)),
        "max": finite(values[-1]) if values else None,
        "censored_after": min(censored) if censored else None,
    }


def makespan(
    events: Iterable[Sequence[Any]],
    solo: Sequence[str],
    batch: Sequence[str],
    max_concurrent: int,
) -> dict[str, Any]:
    """Makespan of the batch against ``ceil(M / K) * T1``.

    ``events`` are ``(name, run_id, time)``.  T1 is the median time from
    ``detected`` to ``completed`` of the solo recoveries after the first
    (which also opened the session).
    """
    first: dict[tuple[str, str], float] = {}
    for name, run_id, when in events:
        first.setdefault((name, run_id), when)
    durations = [
        first[("completed", run_id)] - first[("detected", run_id)]
        for run_id in solo[1:]
        if ("completed", run_id) in first and ("detected", run_id) in first
    ]
    one = statistics.median(durations) if durations else None
    detected = [first[("detected", r)] for r in batch if ("detected", r) in first]
    completed = [first[("completed", r)] for r in batch if ("completed", r) in first]
    exhausted = sum(1 for r in batch if ("exhausted", r) in first)
    span = (
        max(completed) - min(detected)
        if detected and len(completed) == len(batch)
        else None
    )
    ideal = math.ceil(len(batch) / max_concurrent) * one if one else None
    return {
        "runs": len(batch),
        "max_concurrent": max_concurrent,
        "one_recovery": one,
        "solo_durations": durations,
        "ideal": ideal,
        "makespan": span,
        "ratio": span / ideal if span is not None and ideal else None,
        "detection_spread": max(detected) - min(detected) if detected else None,
        "completed": len(completed),
        "exhausted": exhausted,
    }


def merge_watch(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from repetitions of the same scenario (totals, not averages).

    Polls, CPU and due/on-time counts are summed, so ratios weigh each
    repetition by its polls; detections are pooled; lateness percentiles
    are the worst repetition's; RSS per run is the mean.
    """
    if len(rows) == 1:
        return rows[0]
    first = rows[0]
    span = sum(r["window"] for r in rows)
    polls = sum(r["polls"] for r in rows)
    cpu = sum(r["cpu_seconds"] for r in rows)
    server = sum(r["server_cpu_seconds"] for r in rows)
    due = sum(r["on_time"]["due"] for r in rows)
    hit = sum(r["on_time"]["on_time"] for r in rows)
    detections = [r["detection"] for r in rows if r["detection"]]
    merged = {
        **first,
        "repeats": len(rows),
        "window": span,
        "polls": polls,
        "polls_per_s": polls / span,
        "cpu_seconds": cpu,
        "server_cpu_seconds": server,
        "cpu_us_per_poll": cpu / polls * 1e6 if polls else None,
        "client_cores": cpu / span,
        "server_cores": server / span,
        "rss_per_run_kib": statistics.mean(r["rss_per_run_kib"] for r in rows),
        "on_time": {
            "due": due,
            "on_time": hit,
            "ratio": hit / due if due else None,
            "lateness_p50": max(r["on_time"]["lateness_p50"] or 0 for r in rows),
            "lateness_p99": max(r["on_time"]["lateness_p99"] or 0 for r in rows),
        },
        "detection": summarize_detection(
            [x for d in detections for x in d["latencies"]],
            [x for d in detections for x in d["censored"]],
        )
        if detections
        else None,
        "poll_errors": sum(r["poll_errors"] for r in rows),
        "load_before": max(r["load_before"] for r in rows),
        "load_after": max(r["load_after"] for r in rows),
        "repetitions": [
            {
                key: r[key]
                for key in ("polls_per_s", "cpu_us_per_poll", "rss_per_run_kib")
            }
            | {"on_time": r["on_time"]["ratio"]}
            for r in rows
        ],
    }
    return merged
