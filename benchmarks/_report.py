"""The benchmark targets, and the Markdown table."""

from __future__ import annotations

from typing import Any

CLIENT_NAMES = {
    "monitor": "this monitor, each",
    "list": "this monitor, list",
    "sequential": "sequential poller (tinkex loop)",
    "httpx": "bare httpx GET loop",
    "sdk": "official tinker SDK",
}

#: Typography for the Markdown (as escapes, which ruff does not mistake).
TIMES = "\N{MULTIPLICATION SIGN}"
NONE = "\N{EN DASH}"

ON_TIME_TARGET = 0.99
CPU_RATIO_TARGET = 1.3
MEMORY_TARGET_KIB = 10.0
MAKESPAN_TARGET = 1.1
REQUESTS_TARGET = 0.02
LIST_CAPACITY_TARGET = 50_000


def _row(results: dict[str, Any], client: str, runs: int) -> dict[str, Any] | None:
    for row in results["watch"]:
        if row["client"] == client and row["runs"] == runs:
            return dict(row)
    return None


def _sizes(results: dict[str, Any]) -> list[int]:
    return sorted({row["runs"] for row in results["watch"]})


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, what was measured, and whether it was met."""
    out: list[dict[str, Any]] = []
    sizes = _sizes(results)
    if sizes:
        big = max(sizes)
        row = _row(results, "monitor", big)
        if row is not None:
            ratio = row["on_time"]["ratio"]
            out.append(
                {
                    "target": f"on-time ratio ≥ 99 % at {big:,} runs, "
                    f"{row['interval']:g} s interval",
                    "measured": _pct(ratio),
                    "met": ratio is not None and ratio >= ON_TIME_TARGET,
                }
            )
    for runs in sizes:
        mine, floor = _row(results, "monitor", runs), _row(results, "httpx", runs)
        if mine and floor and mine["cpu_us_per_poll"] and floor["cpu_us_per_poll"]:
            ratio = mine["cpu_us_per_poll"] / floor["cpu_us_per_poll"]
            out.append(
                {
                    "target": f"CPU per poll ≤ 1.3 {TIMES} bare httpx ({runs:,} runs)",
                    "measured": f"{ratio:.2f} {TIMES} "
                    f"({mine['cpu_us_per_poll']:.0f} vs "
                    f"{floor['cpu_us_per_poll']:.0f} µs)",
                    "met": ratio <= CPU_RATIO_TARGET,
                }
            )
    for runs in sizes:
        mine = _row(results, "monitor", runs)
        if mine and mine["detection"]:
            p99 = mine["detection"]["p99"]
            bound = mine["detection_bound"]
            seq = _row(results, "sequential", runs)
            out.append(
                {
                    "target": f"detection p99 ≤ {bound:.2f} s ({runs:,} runs)",
                    "measured": f"{_secs(mine['detection'])}"
                    + (
                        f" (sequential: {_secs(seq['detection'])})"
                        if seq and seq["detection"]
                        else ""
                    ),
                    "met": p99 is not None and p99 <= bound,
                }
            )
    for runs in sizes:
        mine = _row(results, "monitor", runs)
        if mine:
            kib = mine["rss_per_run_kib"]
            out.append(
                {
                    "target": f"memory ≤ 10 KiB per watched run ({runs:,} runs)",
                    "measured": f"{kib:.1f} KiB",
                    "met": kib <= MEMORY_TARGET_KIB,
                }
            )
    for runs in sizes:
        row = _row(results, "list", runs)
        if row and runs >= 10_000:
            per_run = row["requests_per_run_interval"]
            out.append(
                {
                    "target": f"≤ {REQUESTS_TARGET} requests per run per interval "
                    f"({runs:,} runs, list)",
                    "measured": f"{per_run:.4f}",
                    "met": per_run <= REQUESTS_TARGET,
                }
            )
    for capacity in results.get("capacity", []):
        if capacity.get("client") == "list" and capacity["interval"] == 5.0:
            best = capacity["max_runs"] or 0
            out.append(
                {
                    "target": f"≥ {LIST_CAPACITY_TARGET:,} runs on time at 5 s (list)",
                    "measured": f"{best:,}",
                    "met": best >= LIST_CAPACITY_TARGET,
                }
            )
    for row in results.get("makespan", []):
        ratio = row["ratio"]
        out.append(
            {
                "target": f"makespan ≤ 1.1 {TIMES} ideal ({row['runs']} runs, "
                f"max_concurrent {row['max_concurrent']})",
                "measured": "incomplete" if ratio is None else f"{ratio:.2f} {TIMES}",
                "met": ratio is not None and ratio <= MAKESPAN_TARGET,
            }
        )
    return out


def _pct(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.1f} %"


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{1000 * value:.0f} ms"


def _s(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f} s"


def _secs(det: dict[str, Any], key: str = "p99") -> str:
    value = det[key]
    if value is None and det["censored_after"] is not None:
        missed = det["flagged"] - det["detected"]
        return f"> {det['censored_after']:.1f} s ({missed} of {det['flagged']} missed)"
    return _s(value)


def markdown(results: dict[str, Any]) -> str:
    """RESULTS.md: how it was run, the tables, the targets."""
    meta = results["meta"]
    settings = meta["settings"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks` (what is measured and how:",
        "`benchmarks/README.md`). Rerun and commit rather than edit.",
        "",
        f"- Command: `{meta['command']}`",
        f"- When: {meta['started']} ({meta['elapsed_s'] / 60:.1f} min)",
        f"- Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"{meta['machine']['memory_gib']:.0f} GiB, {meta['machine']['platform']}",
        f"- Software: Python {meta['machine']['python']}, "
        + ", ".join(f"{k} {v}" for k, v in meta["machine"]["versions"].items()),
        f"- Load average (1 min) before / after: {meta['load_before'][0]:.2f} / "
        f"{meta['load_after'][0]:.2f}; highest seen during a scenario: "
        f"{meta['load_max']:.2f}",
    ]
    if meta.get("notes"):
        lines.append(f"- Notes: {meta['notes']}")
    lines += [
        f"- Simulator: separate process on loopback, {1000 * settings['latency']:.0f}"
        f" ms added to every request; poll interval {settings['interval']:g} s, "
        f"jitter {settings['jitter']:g}; measurement window "
        f"{settings['duration']:g} intervals after one interval of warm-up.",
        "",
    ]
    for runs in _sizes(results):
        first = next(r for r in results["watch"] if r["runs"] == runs)
        lines += [
            f"## {runs:,} watched runs (demand {first['demand_per_s']:.0f} polls/s)",
            "",
            "| client | polls/s | on-time | late p99 | client CPU µs/poll | "
            "client cores | server cores | RSS KiB/run | detect p50 | detect p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for client in CLIENT_NAMES:
            row = _row(results, client, runs)
            if row is None:
                continue
            det = row["detection"]
            cpu = row["cpu_us_per_poll"]
            lines.append(
                f"| {CLIENT_NAMES[client]} | {row['polls_per_s']:.0f} | "
                f"{_pct(row['on_time']['ratio'])} | "
                f"{_ms(row['on_time']['lateness_p99'])} | "
                f"{NONE if cpu is None else f'{cpu:.0f}'} | "
                f"{row['client_cores']:.2f} | {row['server_cores']:.2f} | "
                f"{row['rss_per_run_kib']:.1f} | "
                f"{_secs(det, 'p50') if det else NONE} | "
                f"{_secs(det) if det else NONE} |"
            )
        bound = first["detection_bound"]
        lines += [
            "",
            f"Detection bound: interval {TIMES} (1 + jitter) + 2 {TIMES} latency"
            f" = {bound:.2f} s (list: plus one page).",
            "",
        ]
        polled_by = [
            (client, row)
            for client in CLIENT_NAMES
            if (row := _row(results, client, runs)) is not None
            and "requests_per_run_interval" in row
        ]
        if polled_by:
            lines += [
                "| client | requests / run / interval | GET/s | list pages/s | "
                "on-time (gap ≤ 1.1 interval) |",
                "|---|---:|---:|---:|---:|",
            ]
            for client, row in polled_by:
                span = row["window"]
                lines.append(
                    f"| {CLIENT_NAMES[client]} | "
                    f"{row['requests_per_run_interval']:.4f} | "
                    f"{row['get_requests'] / span:.0f} | "
                    f"{row['list_requests'] / span:.1f} | "
                    f"{_pct(row['gap_on_time']['ratio'])} |"
                )
            lines.append("")
    for key, title in (("skipped", "Skipped"), ("errors", "Errors")):
        if results.get(key):
            lines += [f"{title}:", ""]
            lines += [f"- {item}" for item in results[key]]
            lines.append("")
    if results.get("makespan"):
        lines += [
            "## Recovery makespan",
            "",
            "| runs | max_concurrent | one recovery (T1) | ideal ⌈M/K⌉·T1 | "
            "makespan | ratio | detection spread | client CPU in batch |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["makespan"]:
            ratio = row["ratio"]
            lines.append(
                f"| {row['runs']} | {row['max_concurrent']} | "
                f"{_ms(row['one_recovery'])} | {_s(row['ideal'])} | "
                f"{_s(row['makespan'])} | "
                f"{NONE if ratio is None else f'{ratio:.2f} {TIMES}'} | "
                f"{_ms(row['detection_spread'])} | "
                f"{_s(row.get('batch_cpu_seconds'))} |"
            )
        lines.append("")
    for capacity in results.get("capacity", []):
        who = CLIENT_NAMES[capacity.get("client", "monitor")]
        lines += [
            f"## Capacity at a {capacity['interval']:g} s interval ({who})",
            "",
            "| runs | polls/s (demand) | on-time | late p99 | client cores | "
            "server cores | kept up |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in sorted(capacity["trials"], key=lambda r: r["runs"]):
            lines.append(
                f"| {row['runs']:,} | {row['polls_per_s']:.0f} "
                f"({row['demand_per_s']:.0f}) | "
                f"{_pct(row['on_time']['ratio'])} | "
                f"{_ms(row['on_time']['lateness_p99'])} | "
                f"{row['client_cores']:.2f} | {row['server_cores']:.2f} | "
                f"{'yes' if row['kept_up'] else 'no'} |"
            )
        best = capacity["max_runs"]
        lines += [
            "",
            "Kept up: on-time ratio ≥ 99 % and polls/s within 2 % of the demand.",
            "Largest number of runs kept up with: "
            + (f"**{best:,}**" if best else "none of those tried")
            + (
                f" (the fewest tried that missed: {capacity['first_failure']:,})."
                if capacity.get("first_failure")
                else "."
            ),
            "",
        ]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for item in results["targets"]:
        lines.append(
            f"| {item['target']} | {item['measured']} | "
            f"{'yes' if item['met'] else '**no**'} |"
        )
    lines += [
        "",
        "What bounds each figure, and what was changed to reach it: "
        "`benchmarks/README.md`.",
        "",
    ]
    return "\n".join(lines)
